"""Pure builders of the Pod templates' parts: security, probes, environment and graceful shutdown.

Probes mean "serving": both servers open their ports only after loading the model, and the gateway opens
its HTTP port after its gRPC port, so a probe on the port opened last passes only when everything serves.
Below Kubernetes 1.24 (no native gRPC probes) a tcpSocket probe stands in for the gRPC health check.
"""

from __future__ import annotations

from typing import Any

from .features import ClusterFeatures
from .spec import MoESpec, PodPlacement

RUN_AS_USER = 10001
REDIS_UID = 999  # the uid of the redis user in the official redis images
# The servers drain on SIGTERM (refuse new RPCs, finish admitted ones within 30 s). Before SIGTERM the
# pod waits PRESTOP_SECONDS so that every gateway's Endpoints watch (and kube-proxy) has dropped it:
# no new request is sent to a server that already refuses.
PRESTOP_SECONDS = 5
DRAIN_SECONDS = 30
TERMINATION_GRACE_SECONDS = PRESTOP_SECONDS + DRAIN_SECONDS + 10
STARTUP_PERIOD_SECONDS = 5
STARTUP_FAILURES = 120  # 10 minutes for a model to load before the kubelet gives up on the container
# OpenMP threads when the container has neither a CPU limit nor a request (the downward API would give
# the node's whole CPU count, and every pod on the node would spin that many threads).
DEFAULT_OMP_THREADS = "1"


def container_security(uid: int) -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def serving_check(port: int, features: ClusterFeatures, tls: bool = False) -> dict[str, Any]:
    """The gRPC health check where the kubelet has it (>= 1.24) and the server speaks plaintext (the
    kubelet's gRPC probe has no TLS), else an open TCP port."""
    return {"grpc": {"port": port}} if features.grpc_probe and not tls else {"tcpSocket": {"port": port}}


def http_health_check(port: int, https: bool = False) -> dict[str, Any]:
    """The kubelet does not verify the certificate of an HTTPS probe: no CA needed."""
    return {"httpGet": {"path": "/health", "port": port, **({"scheme": "HTTPS"} if https else {})}}


def probes(check: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Startup (a slow model load is not a failure), readiness (out of Endpoints within ~4 s) and liveness."""
    return {
        "startupProbe": {**check, "periodSeconds": STARTUP_PERIOD_SECONDS, "failureThreshold": STARTUP_FAILURES,
                         "timeoutSeconds": 3},
        "readinessProbe": {**check, "periodSeconds": 2, "failureThreshold": 2, "timeoutSeconds": 2},
        "livenessProbe": {**check, "periodSeconds": 10, "failureThreshold": 3, "timeoutSeconds": 5},
    }


def omp_threads_env(resources: dict[str, Any]) -> dict[str, Any]:
    """OMP_NUM_THREADS from the CPU limit, else the request (rounded up by the downward API), else 1."""
    for kind in ("limits", "requests"):
        if "cpu" in (resources.get(kind) or {}):
            return {"name": "OMP_NUM_THREADS",
                    "valueFrom": {"resourceFieldRef": {"resource": f"{kind}.cpu", "divisor": "1"}}}
    return {"name": "OMP_NUM_THREADS", "value": DEFAULT_OMP_THREADS}


def graceful_shutdown() -> dict[str, Any]:
    """The container's preStop: wait until no client sends new work here, then SIGTERM starts the drain."""
    return {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}}


def pod_spec(spec: MoESpec, placement: PodPlacement | None, container: dict[str, Any],
             volumes: list[dict], uid: int = RUN_AS_USER, service_account: str | None = None) -> dict[str, Any]:
    """Non-root, read-only root filesystem; /tmp is a writable emptyDir (caches, HF downloads)."""
    container = {
        **container,
        "securityContext": container_security(uid),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, *container.get("volumeMounts", [])],
    }
    if spec.image_pull_policy and container["image"] == spec.image:
        container["imagePullPolicy"] = spec.image_pull_policy
    pod: dict[str, Any] = {
        "securityContext": {"runAsNonRoot": True, "runAsUser": uid, "runAsGroup": uid, "fsGroup": uid,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}, *volumes],
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
    }
    if service_account:
        pod["serviceAccountName"] = service_account
    else:
        pod["automountServiceAccountToken"] = False  # no API access: no token in the container
    if placement is not None:
        if placement.resources:
            container["resources"] = placement.resources
        if placement.node_selector:
            pod["nodeSelector"] = placement.node_selector
        if placement.tolerations:
            pod["tolerations"] = placement.tolerations
    return pod
