"""Rollouts under steady load, each the way an operator of the cluster does it: `kubectl rollout
restart` of the gateway and of an expert group, a new image, a new expertsPerReplica. 0 failed requests
and the same greedy tokens (readiness that means "serving", surge before drain, gateway moves first)."""

from __future__ import annotations

import json

from cluster_deploy import NAME, NAMESPACE, diagnose, moed_ready, record
from cluster_kube import RUN_DIR, wait_for
from cluster_load import SteadyLoad

INSTANCE = f"app.kubernetes.io/instance={NAME}"
EXPERTS = f"{INSTANCE},app.kubernetes.io/component=expert-group"


def rolled_out(cluster, deployment: str) -> bool:
    """`kubectl rollout status` done: every replica updated, available, and no old one left."""
    d = cluster.get("deployment", NAMESPACE, deployment)
    s, want = d["status"], d["spec"]["replicas"]
    return (s.get("observedGeneration", 0) >= d["metadata"]["generation"] and s.get("updatedReplicas") == want
            and s.get("availableReplicas") == want and s.get("replicas") == want)


def all_rolled_out(cluster) -> bool:
    names = [d["metadata"]["name"] for d in cluster.get("deployments", NAMESPACE, selector=INSTANCE)["items"]]
    return bool(names) and all(rolled_out(cluster, n) for n in names) and moed_ready(cluster)


def under_load(cluster, deployment, reference, what: str, change, done) -> None:
    with SteadyLoad(deployment["address"], reference, clients=4) as load:
        load.wait_for_requests(4)
        change()
        wait_for(done, what, timeout=600, interval=1.0, diagnose=lambda: diagnose(cluster))
        load.wait_for_requests(8)
    record(f"requests lost: {what}", str(len(load.failures)))
    assert not load.failures, load.failures[:10]


def patch_moed(cluster, spec: dict) -> None:
    cluster.kubectl("-n", NAMESPACE, "patch", "moed", NAME, "--type", "merge", "-p", json.dumps({"spec": spec}))


def test_rollout_restart_of_the_gateway_fails_no_request(cluster, deployment, reference):
    name = f"{NAME}-gateway"
    under_load(cluster, deployment, reference, "rollout restart gateway",
               lambda: cluster.kubectl("-n", NAMESPACE, "rollout", "restart", f"deployment/{name}"),
               lambda: rolled_out(cluster, name))


def test_rollout_restart_of_an_expert_group_fails_no_request(cluster, deployment, reference):
    name = cluster.get("deployments", NAMESPACE, selector=EXPERTS)["items"][0]["metadata"]["name"]
    under_load(cluster, deployment, reference, "rollout restart expert group",
               lambda: cluster.kubectl("-n", NAMESPACE, "rollout", "restart", f"deployment/{name}"),
               lambda: rolled_out(cluster, name))


def test_image_change_fails_no_request(cluster, deployment, reference, images):
    new_image = images[0] + "-retag"  # the same content under a new name: every pod is replaced
    cluster.run("ctr", "--address", str(RUN_DIR / "containerd.sock"), "-n", "k8s.io", "images", "tag", "--force",
                images[0], new_image)

    def on_new_image():
        pods = cluster.get("pods", NAMESPACE, selector=f"{INSTANCE},app.kubernetes.io/component!=redis")["items"]
        return all(p["spec"]["containers"][0]["image"] == new_image for p in pods) and all_rolled_out(cluster)

    under_load(cluster, deployment, reference, "image change", lambda: patch_moed(cluster, {"image": new_image}),
               on_new_image)


def test_experts_per_replica_change_fails_no_request(cluster, deployment, reference):
    def regrouped():
        groups = cluster.get("deployments", NAMESPACE, selector=EXPERTS)["items"]
        return len(groups) == 4 and all_rolled_out(cluster)

    under_load(cluster, deployment, reference, "expertsPerReplica 4 -> 2",
               lambda: patch_moed(cluster, {"experts": {"expertsPerReplica": 2}}), regrouped)
