"""What the cluster tier deploys and the figures it prints (shared by conftest.py and the test files)."""

from __future__ import annotations

from cluster_kube import Cluster

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


def moed_ready(cluster: Cluster) -> bool:
    moed = cluster.get("moed", NAMESPACE, NAME)
    return any(c["type"] == "Ready" and c["status"] == "True" for c in moed.get("status", {}).get("conditions", []))


def diagnose(cluster: Cluster) -> str:
    return (cluster.kubectl("-n", NAMESPACE, "get", "moed,deploy,pods", "-o", "wide", check=False)
            + cluster.kubectl("-n", NAMESPACE, "logs", "deploy/eaas", "--tail=30", check=False))
