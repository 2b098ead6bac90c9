"""Pure builders: a MoEDeployment spec -> the Kubernetes manifests (plain dicts) that realise it.

No API calls here; handlers.py adopts (ownerReferences) and applies what these return.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from eaas.topology import ExpertGroup, format_expert_ids

from .access import gateway_access_manifests, gateway_account_name
from .credentials import (REDIS_PASSWORD_ENV, api_key_args, gateway_tls_args, redis_password_env,
                          secret_volumes, tls_args)
from .decisions import group_replicas
from .labels import MANAGED_BY, owned_labels, selector_labels  # noqa: F401  (re-exported)
from .features import ClusterFeatures, cluster_features  # noqa: F401  (re-exported for cluster.py)
from .network_policies import network_policy_manifests
from .pods import (REDIS_UID, graceful_shutdown, http_health_check, omp_threads_env, pod_spec, probes,
                   serving_check)
from .spec import (EXPERT_GRPC_PORT, EXPERT_METRICS_PORT, GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT, REDIS_PORT,
                   MoESpec, PodPlacement, expert_object_name, group_label)

TOPOLOGY_KEY = "topology.json"
TOPOLOGY_DIR = "/etc/eaas"
MODELS_DIR = "/models"


def expert_service_name(spec: MoESpec, group: ExpertGroup) -> str:
    return expert_object_name(spec.name, group)


def topology_document(spec: MoESpec) -> dict[str, Any]:
    """The topology JSON the gateway reads: which Service hosts which expert ids (in every layer)."""
    return {
        "deployment": spec.name,
        "numExperts": spec.num_experts,
        "numLayers": spec.num_layers,
        "expertsPerReplica": spec.experts_per_replica,
        "groups": [
            {"name": g.name, "experts": list(g.experts), "service": expert_service_name(spec, g),
             "port": EXPERT_GRPC_PORT}
            for g in spec.groups
        ],
    }


def topology_json(spec: MoESpec) -> str:
    return json.dumps(topology_document(spec), indent=2, sort_keys=False)


def model_location(spec: MoESpec) -> tuple[str, list[dict], list[dict]]:
    """(the --model argument, volumes, volumeMounts). pvc://claim/path is mounted read-only at /models/claim."""
    if not spec.model_uri.startswith("pvc://"):
        return spec.model_uri, [], []
    claim, _, path = spec.model_uri[len("pvc://"):].partition("/")
    mount = f"{MODELS_DIR}/{claim}"
    volume = {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    return (f"{mount}/{path}" if path else mount), [volume], [{"name": "model", "mountPath": mount, "readOnly": True}]


def _deployment(spec: MoESpec, name: str, component: str, group: str | None, replicas: int,
                pod_spec: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    template_meta: dict[str, Any] = {"labels": owned_labels(spec, component, group)}
    if annotations:
        template_meta["annotations"] = annotations
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": owned_labels(spec, component, group)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector_labels(spec, component, group)},
            # Never drop below the current capacity while rolling: surge one new replica first.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": template_meta, "spec": pod_spec},
        },
    }


def _service(spec: MoESpec, name: str, component: str, group: str | None, ports: dict[str, int],
             headless: bool = False) -> dict[str, Any]:
    service_spec: dict[str, Any] = {
        "selector": selector_labels(spec, component, group),
        "ports": [{"name": port_name, "port": port, "targetPort": port, "protocol": "TCP"}
                  for port_name, port in ports.items()],
    }
    if headless:
        # Headless: DNS returns every ready replica, so clients balance per connection themselves.
        service_spec["clusterIP"] = "None"
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": owned_labels(spec, component, group)},
        "spec": service_spec,
    }


def _pdb(spec: MoESpec, name: str, component: str, group: str | None, features: ClusterFeatures) -> dict[str, Any]:
    return {
        "apiVersion": features.pdb_api_version,
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name, "namespace": spec.namespace, "labels": owned_labels(spec, component, group)},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(spec, component, group)}},
    }


def _redis_args(spec: MoESpec) -> list[str]:
    return ["--redis", spec.redis_url] if spec.redis_url else []


def _transport_args(spec: MoESpec) -> list[str]:
    """auto is the commands' default; between pods it is gRPC (no pod reaches another's slot socket)."""
    return [] if spec.transport == "auto" else ["--transport", spec.transport]


def expert_command(spec: MoESpec, group: ExpertGroup) -> list[str]:
    model, _, _ = model_location(spec)
    return ["eaas", "expert-server", "--model", model, "--experts", format_expert_ids(group.experts),
            "--host", "0.0.0.0", "--port", str(EXPERT_GRPC_PORT), "--metrics-port", str(EXPERT_METRICS_PORT),
            "--deployment", spec.name, "--group", group.name,
            "--advertise", f"$(POD_IP):{EXPERT_GRPC_PORT}",  # the registry needs a reachable address
            *_redis_args(spec), *tls_args(spec), *_transport_args(spec)]


def gateway_command(spec: MoESpec) -> list[str]:
    model, _, _ = model_location(spec)
    return ["eaas", "gateway", "--model", model, "--topology", f"{TOPOLOGY_DIR}/{TOPOLOGY_KEY}", "--watch-endpoints",
            "--grpc-port", str(GATEWAY_GRPC_PORT), "--http-port", str(GATEWAY_HTTP_PORT),
            "--deployment", spec.name, *_redis_args(spec), *gateway_tls_args(spec), *api_key_args(spec),
            *_transport_args(spec)]


def _eaas_container(spec: MoESpec, name: str, command: list[str], ports: dict[str, int],
                    placement: PodPlacement, probe_check: dict[str, Any], extra_mounts: list[dict]) -> dict[str, Any]:
    _, _, model_mounts = model_location(spec)
    return {
        "name": name,
        "image": spec.image,
        "command": command,
        "env": [{"name": "HF_HOME", "value": "/tmp/huggingface"}, {"name": "PYTHONUNBUFFERED", "value": "1"},
                {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                # torch's OpenMP threads = the CPU the container may use: more threads than cores make it spin
                omp_threads_env(placement.resources), *redis_password_env(spec)],
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in ports.items()],
        **probes(probe_check),
        "lifecycle": graceful_shutdown(),
        "volumeMounts": [*model_mounts, *extra_mounts],
    }


def topology_configmap(spec: MoESpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": f"{spec.name}-topology", "namespace": spec.namespace,
                     "labels": owned_labels(spec, "topology")},
        "data": {TOPOLOGY_KEY: topology_json(spec)},
    }


def gateway_manifests(spec: MoESpec, features: ClusterFeatures) -> list[dict[str, Any]]:
    name = f"{spec.name}-gateway"
    ports = {"grpc": GATEWAY_GRPC_PORT, "http": GATEWAY_HTTP_PORT}
    # The HTTP port opens after the gRPC port: /health answering means both serve, on every version.
    secret_vols, secret_mounts = secret_volumes(spec, api_key=True)
    https = bool(spec.security.tls_secret_name)  # the HTTP port serves TLS too: so does the probe
    container = _eaas_container(spec, "gateway", gateway_command(spec), ports, spec.gateway,
                                http_health_check(GATEWAY_HTTP_PORT, https),
                                [{"name": "topology", "mountPath": TOPOLOGY_DIR, "readOnly": True},
                                 *secret_mounts])
    _, model_volumes, _ = model_location(spec)
    volumes = [{"name": "topology", "configMap": {"name": f"{spec.name}-topology"}}, *model_volumes,
               *secret_vols]
    # A topology change (re-shaped groups) must roll the gateways: the hash is part of the pod template.
    topology_hash = hashlib.sha256(topology_json(spec).encode()).hexdigest()[:16]
    annotations = {"eaas.dev/topology-hash": topology_hash, "prometheus.io/scrape": "true",
                   "prometheus.io/port": str(GATEWAY_HTTP_PORT)}
    pod = pod_spec(spec, spec.gateway, container, volumes, service_account=gateway_account_name(spec))
    return [
        *gateway_access_manifests(spec, owned_labels(spec, "gateway")),
        _deployment(spec, name, "gateway", None, spec.gateway_replicas, pod, annotations),
        _service(spec, name, "gateway", None, ports),
        _pdb(spec, name, "gateway", None, features),
    ]


def expert_group_manifests(spec: MoESpec, group: ExpertGroup, replicas: int,
                           features: ClusterFeatures) -> list[dict[str, Any]]:
    name = expert_service_name(spec, group)
    ports = {"grpc": EXPERT_GRPC_PORT, "metrics": EXPERT_METRICS_PORT}
    secret_vols, secret_mounts = secret_volumes(spec, api_key=False)
    # the kubelet's gRPC probe speaks no TLS: a TLS server is probed by its open port
    container = _eaas_container(spec, "expert-server", expert_command(spec, group), ports, spec.experts,
                                serving_check(EXPERT_GRPC_PORT, features, tls=bool(spec.security.tls_secret_name)),
                                secret_mounts)
    _, model_volumes, _ = model_location(spec)
    model_volumes = [*model_volumes, *secret_vols]
    annotations = {"eaas.dev/experts": format_expert_ids(group.experts), "prometheus.io/scrape": "true",
                   "prometheus.io/port": str(EXPERT_METRICS_PORT)}
    pod = pod_spec(spec, spec.experts, container, model_volumes)
    return [
        _deployment(spec, name, "expert-group", group_label(group), replicas, pod, annotations),
        _service(spec, name, "expert-group", group_label(group), ports, headless=True),
        _pdb(spec, name, "expert-group", group_label(group), features),
    ]


def redis_manifests(spec: MoESpec) -> list[dict[str, Any]]:
    """A single in-memory Redis (no persistence): KV blocks and load windows are caches, safe to lose."""
    name = f"{spec.name}-redis"
    container = {
        "name": "redis",
        "image": spec.redis_image,
        # $(VAR) is expanded by the kubelet: the password never appears in the pod spec
        "command": ["redis-server", "--port", str(REDIS_PORT), "--save", "", "--appendonly", "no",
                    "--dir", "/data", "--protected-mode", "no", "--requirepass", f"$({REDIS_PASSWORD_ENV})"],
        "env": redis_password_env(spec),
        "ports": [{"name": "redis", "containerPort": REDIS_PORT, "protocol": "TCP"}],
        **probes({"tcpSocket": {"port": REDIS_PORT}}),
        "volumeMounts": [{"name": "data", "mountPath": "/data"}],
    }
    pod = pod_spec(spec, None, container, [{"name": "data", "emptyDir": {}}], uid=REDIS_UID)
    return [
        _deployment(spec, name, "redis", None, 1, pod),
        _service(spec, name, "redis", None, {"redis": REDIS_PORT}),
    ]


def desired_manifests(spec: MoESpec, replicas: dict[str, int], features: ClusterFeatures,
                      operator_peer: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Every child object the operator applies; `replicas` maps group name -> replicas (see group_replicas).
    operator_peer: the NetworkPolicy peer of the operator's own pod (it reads load from a managed Redis).
    Not here: a managed Redis's password Secret, created once (credentials.redis_password_secret)."""
    manifests = [topology_configmap(spec), *gateway_manifests(spec, features)]
    counts = group_replicas(spec, replicas)
    for group in spec.groups:
        manifests += expert_group_manifests(spec, group, counts[group.name], features)
    if spec.redis_managed:
        manifests += redis_manifests(spec)
    if spec.security.network_policies:
        manifests += network_policy_manifests(spec, operator_peer)
    return manifests
