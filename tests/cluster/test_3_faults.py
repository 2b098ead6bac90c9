"""Faults under steady load, as a cluster produces them: an expert pod force-deleted, an expert
container's process SIGKILLed (the kubelet restarts it), a gateway pod force-deleted mid-stream.
Every request completes with the tokens transformers.generate gives."""

from __future__ import annotations

import os
import signal
import time

from cluster_deploy import NAME, NAMESPACE, diagnose, record
from cluster_kube import RUN_DIR, metric, wait_for
from cluster_load import SteadyLoad

EXPERTS = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=expert-group"
GATEWAYS = f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component=gateway"


def group_of(pod: dict) -> str:
    return pod["metadata"]["labels"]["eaas.dev/group"]


def replacement_ready(cluster, selector: str, gone: str, count: int):
    """`count` Ready pods for selector, none of them `gone` (kubelet 1.20.2 keeps it Terminating a while)."""
    pods = cluster.ready_pods(NAMESPACE, selector)
    return len(pods) == count and all(p["metadata"]["name"] != gone for p in pods)


def container_pid(cluster, pod: dict) -> int:
    """The host pid of the pod's container, from the node's containerd (what `crictl inspect` shows)."""
    container_id = pod["status"]["containerStatuses"][0]["containerID"].split("://", 1)[1]
    out = cluster.run("ctr", "--address", str(RUN_DIR / "containerd.sock"), "-n", "k8s.io", "tasks", "ls")
    for line in out.splitlines()[1:]:
        task, pid, _status = line.split()
        if task == container_id:
            return int(pid)
    raise AssertionError(f"no task for container {container_id}:\n{out}")


def test_expert_pod_force_deleted_mid_stream_fails_no_request(cluster, deployment, reference):
    victim = cluster.ready_pods(NAMESPACE, EXPERTS)[0]
    name, group = victim["metadata"]["name"], group_of(victim)
    with SteadyLoad(deployment["address"], reference, clients=4) as load:
        load.wait_for_requests(4)
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
        wait_for(lambda: replacement_ready(cluster, f"{EXPERTS},eaas.dev/group={group}", name, 2),
                 "a Ready replacement expert pod", timeout=240, diagnose=lambda: diagnose(cluster))
        load.wait_for_requests(8)
    record("requests lost: expert pod force-deleted", str(len(load.failures)))
    assert not load.failures, load.failures[:10]


def test_expert_process_sigkilled_mid_stream_fails_no_request(cluster, deployment, reference):
    victim = cluster.ready_pods(NAMESPACE, EXPERTS)[-1]
    name = victim["metadata"]["name"]
    restarts = victim["status"]["containerStatuses"][0]["restartCount"]
    with SteadyLoad(deployment["address"], reference, clients=4) as load:
        load.wait_for_requests(4)
        served = metric(f"http://{victim['status']['podIP']}:9090/metrics", "eaas_expert_requests_total")
        assert served > 0, "the victim served no RPC: the kill would prove nothing"
        os.kill(container_pid(cluster, victim), signal.SIGKILL)

        def restarted_and_ready():
            pod = cluster.get("pod", NAMESPACE, name)
            status = pod["status"]["containerStatuses"][0]
            return status["restartCount"] > restarts and status.get("ready")

        wait_for(restarted_and_ready, "the kubelet to restart the killed container", timeout=240,
                 diagnose=lambda: diagnose(cluster))
        load.wait_for_requests(8)
    record("requests lost: expert process SIGKILLed", str(len(load.failures)))
    assert not load.failures, load.failures[:10]


def test_gateway_pod_killed_mid_stream_resumes_on_the_other(cluster, deployment, reference):
    with SteadyLoad(deployment["address"], reference, clients=6, max_tokens=32) as load:
        load.wait_for_requests(6)

        def busy_gateway():  # a gateway with streams in progress right now: killing it is mid-stream
            for pod in cluster.ready_pods(NAMESPACE, GATEWAYS):
                if metric(f"http://{pod['status']['podIP']}:8000/metrics", "eaas_gateway_requests_in_progress") > 0:
                    return pod
            return None

        victim = wait_for(busy_gateway, "a gateway with requests in progress", timeout=60)
        name = victim["metadata"]["name"]
        killed_at = time.monotonic()
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--grace-period=0", "--force", "--wait=false")
        wait_for(lambda: replacement_ready(cluster, GATEWAYS, name, 2), "a Ready replacement gateway",
                 timeout=240, diagnose=lambda: diagnose(cluster))
        print(f"gateway {name} killed; replacement Ready after {time.monotonic() - killed_at:.1f}s")
        load.wait_for_requests(8)
    record("requests lost: gateway pod killed mid-stream", str(len(load.failures)))
    assert not load.failures, load.failures[:10]
