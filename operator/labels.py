"""The labels on every child of a MoEDeployment: what Services, PodDisruptionBudgets, NetworkPolicies
and the operator's own pruning select on."""

from __future__ import annotations

from .spec import MoESpec

MANAGED_BY = "eaas-operator"


def owned_labels(spec: MoESpec, component: str, group: str | None = None) -> dict[str, str]:
    """Labels on every child; the selector subset (selector_labels) must never change."""
    return {
        "app.kubernetes.io/name": "eaas",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        **selector_labels(spec, component, group),
    }


def selector_labels(spec: MoESpec, component: str, group: str | None = None) -> dict[str, str]:
    labels = {"app.kubernetes.io/instance": spec.name, "app.kubernetes.io/component": component}
    if group is not None:
        labels["eaas.dev/group"] = group
    return labels
