"""NetworkPolicies of a MoEDeployment (pure builders; desired_manifests includes them unless
`security.networkPolicies: false`). Each selects pods of this deployment only and admits ingress:
- expert servers: gRPC only from the deployment's gateway pods; metrics from `security.metricsFrom`
  (anywhere when unset);
- gateways: gRPC and HTTP from `security.gatewayFrom` (anywhere when unset); nothing else;
- a managed Redis: only from the deployment's own pods and the operator's pod.
Traffic from the node itself (the kubelet's probes) is always admitted by Kubernetes."""

from __future__ import annotations

from typing import Any

from .labels import owned_labels, selector_labels
from .spec import (EXPERT_GRPC_PORT, EXPERT_METRICS_PORT, GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT, REDIS_PORT,
                   MoESpec)


def _policy(spec: MoESpec, name: str, component: str, pod_selector: dict[str, str],
            ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": spec.namespace, "labels": owned_labels(spec, component)},
            "spec": {"podSelector": {"matchLabels": pod_selector}, "policyTypes": ["Ingress"], "ingress": ingress}}


def _rule(ports: list[int], peers: tuple[dict[str, Any], ...] | list[dict[str, Any]] | None) -> dict[str, Any]:
    """An ingress rule on TCP ports; peers None: from anywhere (no `from`)."""
    rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": port} for port in ports]}
    if peers is not None:
        rule["from"] = [dict(peer) for peer in peers]
    return rule


def operator_peer(namespace: str | None, labels: dict[str, str] | None, deployment_namespace: str
                  ) -> dict[str, Any] | None:
    """The operator's pod as a peer seen from a deployment's namespace; None when it runs outside the
    cluster (its traffic then comes from a node, which NetworkPolicies never block). Another namespace is
    matched by the `kubernetes.io/metadata.name` label that Kubernetes >= 1.21 puts on every namespace."""
    if not namespace or not labels:
        return None
    peer: dict[str, Any] = {"podSelector": {"matchLabels": dict(labels)}}
    if namespace != deployment_namespace:
        peer["namespaceSelector"] = {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
    return peer


def network_policy_manifests(spec: MoESpec, operator: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    security = spec.security
    gateways = {"podSelector": {"matchLabels": selector_labels(spec, "gateway")}}
    experts = {"app.kubernetes.io/instance": spec.name, "app.kubernetes.io/component": "expert-group"}
    policies = [
        _policy(spec, f"{spec.name}-experts", "expert-group", experts,
                [_rule([EXPERT_GRPC_PORT], [gateways]), _rule([EXPERT_METRICS_PORT], security.metrics_from)]),
        _policy(spec, f"{spec.name}-gateway", "gateway", selector_labels(spec, "gateway"),
                [_rule([GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT], security.gateway_from)]),
    ]
    if spec.redis_managed:
        own_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": spec.name}}}
        peers = [own_pods, *([operator] if operator else [])]
        policies.append(_policy(spec, f"{spec.name}-redis", "redis", selector_labels(spec, "redis"),
                                [_rule([REDIS_PORT], peers)]))
    return policies
