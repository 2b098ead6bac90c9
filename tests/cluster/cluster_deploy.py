"""What the cluster tier deploys and the figures it prints (shared by conftest.py and the test files)."""

from __future__ import annotations

from cluster_kube import Cluster, wait_for

NAMESPACE = "eaas-cluster"
NAME = "tiny"
RELEASE = "eaas"
MODEL_CLAIM = "models"
PV_NAME = f"{NAMESPACE}-models"
TIMINGS: dict[str, str] = {}  # printed at the end of the session: the figures the README quotes


def record(name: str, value: str) -> None:
    TIMINGS[name] = value
    print(f"{name}: {value}", flush=True)


# Limits set OMP_NUM_THREADS to 1 per pod; requests stay small so 2x2 experts, 2 gateways, a surge and a
# scale-up all fit on a 2-CPU node (a request defaults to the limit otherwise).
RESOURCES = {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"cpu": "1", "memory": "2Gi"}}


def moedeployment_manifest(image: str, redis_image: str, model_uri: str, experts_per_replica: int = 4,
                           target: float = 1e6) -> dict:
    return {
        "apiVersion": "eaas.dev/v1alpha1", "kind": "MoEDeployment", "metadata": {"name": NAME},
        "spec": {
            "image": image, "imagePullPolicy": "Never",
            "model": {"uri": model_uri, "numExperts": 8, "numLayers": 3},
            "gateway": {"replicas": 2, "resources": RESOURCES},
            "experts": {"expertsPerReplica": experts_per_replica, "minReplicas": 2, "maxReplicas": 3,
                        "resources": RESOURCES},
            "memPool": {"managed": True, "redisImage": redis_image},
            "autoscaling": {"enabled": True, "targetTokensPerSecondPerReplica": target,
                            "scaleUpStabilizationSeconds": 0, "scaleDownStabilizationSeconds": 10,
                            "intervalSeconds": 2},
        },
    }


def moed_ready(cluster: Cluster, name: str = NAME) -> bool:
    moed = cluster.get("moed", NAMESPACE, name)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in moed.get("status", {}).get("conditions", []))


def diagnose(cluster: Cluster) -> str:
    return (cluster.kubectl("-n", NAMESPACE, "get", "moed,deploy,pods", "-o", "wide", check=False)
            + cluster.kubectl("-n", NAMESPACE, "logs", "deploy/eaas", "--tail=30", check=False))


KINDS = "deployments,replicasets,services,configmaps,poddisruptionbudgets,pods,networkpolicies,secrets"


def owned(cluster: Cluster, name: str) -> list[str]:
    out = cluster.kubectl("-n", NAMESPACE, "get", KINDS, "-l", f"app.kubernetes.io/instance={name}", "-o", "name")
    return out.split()


def delete_and_wait(cluster: Cluster, name: str) -> None:
    cluster.kubectl("-n", NAMESPACE, "delete", "moed", name, "--wait=false")
    wait_for(lambda: not cluster.kubectl("-n", NAMESPACE, "get", "moed", name, "--ignore-not-found", "-o", "name"),
             f"MoEDeployment {name} to be gone", timeout=120, diagnose=lambda: diagnose(cluster))
    wait_for(lambda: not owned(cluster, name), f"every object {name} owned to be gone", timeout=180,
             diagnose=lambda: "\n".join(owned(cluster, name)))
