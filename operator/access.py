"""Pure builders of the gateway's API access: a ServiceAccount, a Role that may read Endpoints (the
gateway watches its expert groups' Endpoints: gateway/endpoints_watch.py) and the RoleBinding between them.
Expert servers and Redis get no API access at all (no token is mounted)."""

from __future__ import annotations

from typing import Any

from .spec import MoESpec

RBAC_API = "rbac.authorization.k8s.io/v1"


def gateway_account_name(spec: MoESpec) -> str:
    return f"{spec.name}-gateway"


def gateway_access_manifests(spec: MoESpec, labels: dict[str, str]) -> list[dict[str, Any]]:
    name = gateway_account_name(spec)
    meta = {"name": name, "namespace": spec.namespace, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": RBAC_API, "kind": "Role", "metadata": meta,
         "rules": [{"apiGroups": [""], "resources": ["endpoints"], "verbs": ["get", "list", "watch"]}]},
        {"apiVersion": RBAC_API, "kind": "RoleBinding", "metadata": meta,
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": spec.namespace}]},
    ]
