"""Least privilege, checked on what is deployed: the chart's RBAC names every verb and resource (no
wildcards), and every pod the operator builds runs non-root, read-only, without capabilities, under the
runtime's default seccomp profile."""

from __future__ import annotations

import pytest
from test_chart import rendered

from eaas.operator.manifests import ClusterFeatures, desired_manifests
from eaas.operator.spec import parse_spec

SPEC = {"model": {"uri": "/models/tiny", "numExperts": 8, "numLayers": 4}, "image": "eaas:test",
        "experts": {"expertsPerReplica": 4}, "memPool": {"managed": True}}


def test_chart_rbac_has_no_wildcard_verbs_resources_or_api_groups():
    roles = [d for d in rendered() if d["kind"] in ("ClusterRole", "Role")]
    assert roles, "the chart renders no Role or ClusterRole"
    for role in roles:
        for rule in role.get("rules", []):
            for field in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
                assert "*" not in (rule.get(field) or []), (role["metadata"]["name"], rule)
            assert not any("*" in r for r in rule.get("resources") or []), rule  # e.g. "pods/*"


def _pods(manifests):
    return [m["spec"]["template"]["spec"] for m in manifests if m["kind"] == "Deployment"]


@pytest.mark.parametrize("source", ["operator", "chart"])
def test_every_pod_drops_capabilities_and_uses_runtime_default_seccomp(source):
    if source == "operator":
        pods = _pods(desired_manifests(parse_spec("mix", "team", SPEC), {}, ClusterFeatures(True, "policy/v1")))
        assert len(pods) == 4  # gateway, two expert groups, redis
    else:
        pods = _pods(rendered())
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for c in pod["containers"]:
            sc = c["securityContext"]
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
