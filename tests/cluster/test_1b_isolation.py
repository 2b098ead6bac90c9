"""Network isolation and pod security as an attacker inside the cluster meets them: a pod outside the
gateway selector is refused by the expert servers and the managed Redis (the operator's NetworkPolicies,
enforced by the testbed's enforcer), yet reaches the gateway; Redis wants the generated password; the
eaas image runs as uid 10001 on a read-only root; the gateway still serves exact tokens."""

from __future__ import annotations

import base64
import json
import socket

import pytest
import redis
from cluster_deploy import NAME, NAMESPACE, diagnose
from cluster_kube import wait_for
from cluster_load import MAX_TOKENS

from eaas.client import SyncClient

# What the probe pod runs: a TCP connect to each target, and what its own container allows.
PROBE = """
import json, os, socket, sys
result = {"uid": os.getuid()}
for name, address in json.loads(sys.argv[1]).items():
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
        result[name] = "open"
    except ConnectionRefusedError:
        result[name] = "refused"
    except OSError as error:
        result[name] = type(error).__name__
try:
    open("/probe", "w")
    result["root_writable"] = True
except OSError:
    result["root_writable"] = False
print(json.dumps(result), flush=True)
"""


def pod_ip(cluster, component: str) -> str:
    pods = cluster.ready_pods(NAMESPACE, f"app.kubernetes.io/instance={NAME},app.kubernetes.io/component={component}")
    assert pods, component
    return pods[0]["status"]["podIP"]


def probe_pod(image: str, targets: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "outsider", "labels": {"app": "outsider"}},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "probe", "image": image, "imagePullPolicy": "Never",
                                     "command": ["python3", "-c", PROBE, json.dumps(targets)],
                                     "securityContext": {"readOnlyRootFilesystem": True,
                                                         "allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


def test_operator_writes_the_network_policies(cluster, deployment):
    names = cluster.kubectl("-n", NAMESPACE, "get", "networkpolicies", "-l", f"app.kubernetes.io/instance={NAME}",
                            "-o", "name").split()
    assert sorted(names) == [f"networkpolicy.networking.k8s.io/{NAME}-{c}" for c in ("experts", "gateway", "redis")]


def test_a_pod_outside_the_gateway_selector_cannot_reach_experts_or_redis(cluster, images, deployment, reference):
    targets = {"gateway": f"{pod_ip(cluster, 'gateway')}:50050", "expert": f"{pod_ip(cluster, 'expert-group')}:50051",
               "redis": f"{pod_ip(cluster, 'redis')}:6379"}
    # the node itself is always admitted (kubelet probes): the expert server is up and listening
    host, port = targets["expert"].split(":")
    socket.create_connection((host, int(port)), timeout=5).close()
    cluster.kubectl("-n", NAMESPACE, "delete", "pod", "outsider", "--ignore-not-found", "--wait=true")
    cluster.apply(probe_pod(images[0], targets), NAMESPACE)
    try:
        wait_for(lambda: cluster.get("pod", NAMESPACE, "outsider")["status"].get("phase") in ("Succeeded", "Failed"),
                 "the outsider pod to finish", timeout=180, interval=1.0, diagnose=lambda: diagnose(cluster))
        result = json.loads(cluster.kubectl("-n", NAMESPACE, "logs", "outsider").strip().splitlines()[-1])
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", "outsider", "--ignore-not-found", "--wait=false")
    print(result)
    assert result["gateway"] == "open"  # its network works: gateways take anyone by default
    assert result["expert"] == "refused"
    assert result["redis"] == "refused"
    assert result["uid"] == 10001 and result["root_writable"] is False  # the image runs non-root, read-only
    with SyncClient([deployment["address"]], timeout=120) as client:
        prompt = reference.prompts[0]
        assert client.generate(prompt_ids=prompt, max_tokens=MAX_TOKENS, ignore_eos=True).token_ids == \
            reference.expected(prompt)


def test_managed_redis_wants_the_generated_password(cluster, deployment):
    secret = cluster.get("secret", NAMESPACE, f"{NAME}-redis-auth")
    password = base64.b64decode(secret["data"]["password"]).decode()
    assert len(password) >= 40
    host = pod_ip(cluster, "redis")
    with redis.Redis(host=host, port=6379, socket_timeout=5) as anonymous, \
            pytest.raises(redis.AuthenticationError):
        anonymous.ping()
    with redis.Redis(host=host, port=6379, password=password, socket_timeout=5) as client:
        assert client.ping()
        # the pods authenticated with it: the expert servers registered themselves
        assert client.keys(f"eaas:{NAME}:*")
