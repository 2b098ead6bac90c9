"""Load drives the operator to scale an expert group up; the new pod turns Ready and serves RPCs (its own
/metrics show them); when load is no longer enough the group scales back down without a failed request."""

from __future__ import annotations

import json
import time

from cluster_deploy import NAME, NAMESPACE, diagnose, record
from cluster_kube import is_ready, metric, wait_for
from cluster_load import SteadyLoad

EXPERTS = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=expert-group"


def set_target(cluster, tokens_per_second: float) -> None:
    patch = {"spec": {"autoscaling": {"targetTokensPerSecondPerReplica": tokens_per_second}}}
    cluster.kubectl("-n", NAMESPACE, "patch", "moed", NAME, "--type", "merge", "-p", json.dumps(patch))


def group_replicas(cluster) -> dict[str, int]:
    """Each expert Deployment's desired replicas (what the operator decided)."""
    deployments = cluster.get("deployments", NAMESPACE, selector=EXPERTS)["items"]
    return {d["metadata"]["name"]: d["spec"]["replicas"] for d in deployments}


def expert_pods(cluster) -> dict[str, dict]:
    return {p["metadata"]["name"]: p for p in cluster.get("pods", NAMESPACE, selector=EXPERTS)["items"]}


def served_rpcs(pod: dict) -> float:
    ip = pod["status"].get("podIP")
    return metric(f"http://{ip}:9090/metrics", "eaas_expert_requests_total") if ip else 0.0


def test_load_scales_a_group_up_and_the_new_pod_serves_then_scales_down_without_failures(
        cluster, deployment, reference):
    before_pods = set(expert_pods(cluster))
    before = group_replicas(cluster)
    assert set(before.values()) == {2}, before
    with SteadyLoad(deployment["address"], reference, clients=4) as load:
        load.wait_for_requests(4)
        set_target(cluster, 2.0)  # a few tokens per second per replica: any steady load is "too much"
        grown = wait_for(lambda: [name for name, n in group_replicas(cluster).items() if n > before[name]],
                         "the operator to scale an expert group up", timeout=180,
                         diagnose=lambda: diagnose(cluster))
        decided = time.monotonic()
        group = grown[0]

        def new_pod_serving():
            for name, pod in expert_pods(cluster).items():
                if name.startswith(group) and name not in before_pods and is_ready(pod) and served_rpcs(pod) > 0:
                    return name
            return None

        new_pod = wait_for(new_pod_serving, f"a new pod of {group} to serve RPCs", timeout=300,
                           diagnose=lambda: diagnose(cluster))
        record("scale decision -> new replica's first RPC (s)", f"{time.monotonic() - decided:.1f}")
        print(f"scaled {group}: {before[group]} -> {group_replicas(cluster)[group]}; {new_pod} serves")
        load.wait_for_requests(4)

        set_target(cluster, 1e6)
        wait_for(lambda: set(group_replicas(cluster).values()) == {2}, "the operator to scale back down",
                 timeout=240, diagnose=lambda: diagnose(cluster))
        wait_for(lambda: len([p for p in expert_pods(cluster).values()
                              if not p["metadata"].get("deletionTimestamp")]) == 4,
                 "the extra pods to go", timeout=180)
        load.wait_for_requests(8)
    record("requests lost in scale-up + scale-down", str(len(load.failures)))
    assert not load.failures, load.failures[:10]
