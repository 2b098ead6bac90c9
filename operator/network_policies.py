"""NetworkPolicies of a MoEDeployment (pure builders, not yet applied by the operator: its ClusterRole
needs `networkpolicies` first). Expert servers take gRPC only from the deployment's gateway pods (their
metrics port stays open to the namespaces the user allows); a managed Redis only from the deployment's pods."""

from __future__ import annotations

from typing import Any

from eaas.operator.manifests import owned_labels, selector_labels
from eaas.operator.spec import EXPERT_GRPC_PORT, EXPERT_METRICS_PORT, REDIS_PORT, MoESpec


def _policy(spec: MoESpec, name: str, component: str, pod_selector: dict[str, str],
            ingress: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": spec.namespace, "labels": owned_labels(spec, component)},
            "spec": {"podSelector": {"matchLabels": pod_selector}, "policyTypes": ["Ingress"], "ingress": ingress}}


def network_policy_manifests(spec: MoESpec, metrics_from: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """metrics_from: NetworkPolicy peers allowed to scrape expert metrics; None: from anywhere."""
    gateways = {"podSelector": {"matchLabels": selector_labels(spec, "gateway")}}
    metrics_rule: dict[str, Any] = {"ports": [{"protocol": "TCP", "port": EXPERT_METRICS_PORT}]}
    if metrics_from is not None:
        metrics_rule["from"] = metrics_from
    policies = [_policy(spec, f"{spec.name}-experts", "expert-group",
                        {"app.kubernetes.io/instance": spec.name, "app.kubernetes.io/component": "expert-group"},
                        [{"from": [gateways], "ports": [{"protocol": "TCP", "port": EXPERT_GRPC_PORT}]}, metrics_rule])]
    if spec.redis_managed:
        own_pods = {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": spec.name}}}
        policies.append(_policy(spec, f"{spec.name}-redis", "redis", selector_labels(spec, "redis"),
                                [{"from": [own_pods], "ports": [{"protocol": "TCP", "port": REDIS_PORT}]}]))
    return policies
