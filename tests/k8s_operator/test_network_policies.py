"""NetworkPolicies: which pods may reach the expert servers and Redis, decided by label selectors.
A policy is evaluated here as Kubernetes evaluates it (matchLabels subset) against the pods' real labels."""

from __future__ import annotations

import kubernetes_validate
import pytest

from eaas.operator.manifests import ClusterFeatures, desired_manifests
from eaas.operator.network_policies import network_policy_manifests
from eaas.operator.spec import EXPERT_GRPC_PORT, EXPERT_METRICS_PORT, REDIS_PORT, parse_spec

SPEC = {"model": {"uri": "/models/tiny", "numExperts": 8, "numLayers": 4}, "image": "eaas:test",
        "experts": {"expertsPerReplica": 4}, "memPool": {"managed": True}}


def _matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def admitted(policies: list[dict], target: dict, source: dict, port: int) -> bool:
    """Does traffic from a pod labelled `source` reach `target` on `port` (same namespace)?"""
    selecting = [p for p in policies if _matches(p["spec"]["podSelector"], target)]
    if not selecting:
        return True  # no policy selects the pod: Kubernetes admits everything
    for p in selecting:
        for rule in p["spec"]["ingress"]:
            port_ok = any(r["port"] == port for r in rule.get("ports", []))
            peers = rule.get("from")
            if port_ok and (peers is None or any(_matches(peer["podSelector"], source) for peer in peers)):
                return True
    return False


@pytest.fixture
def pods():
    moe = parse_spec("mix", "team", SPEC)
    other = parse_spec("other", "team", SPEC)
    labels = lambda spec: {m["metadata"]["name"]: m["spec"]["template"]["metadata"]["labels"]  # noqa: E731
                           for m in desired_manifests(spec, {}, ClusterFeatures(True, "policy/v1"))
                           if m["kind"] == "Deployment"}
    return moe, labels(moe), labels(other)


def test_expert_servers_take_grpc_only_from_their_own_gateways(pods):
    moe, mine, theirs = pods
    policies = network_policy_manifests(moe)
    experts = [name for name in mine if "-experts-" in name]
    assert len(experts) == 2
    for expert in experts:
        assert admitted(policies, mine[expert], mine["mix-gateway"], EXPERT_GRPC_PORT)
        assert not admitted(policies, mine[expert], theirs["other-gateway"], EXPERT_GRPC_PORT)  # another deployment
        assert not admitted(policies, mine[expert], {"app": "curious-pod"}, EXPERT_GRPC_PORT)
        sibling = next(e for e in experts if e != expert)
        assert not admitted(policies, mine[expert], mine[sibling], EXPERT_GRPC_PORT)
        assert admitted(policies, mine[expert], {"app": "prometheus"}, EXPERT_METRICS_PORT)


def test_metrics_can_be_limited_and_redis_takes_only_the_deployments_pods(pods):
    moe, mine, theirs = pods
    prometheus = {"podSelector": {"matchLabels": {"app": "prometheus"}}}
    policies = network_policy_manifests(moe, metrics_from=[prometheus])
    expert = next(name for name in mine if "-experts-" in name)
    assert not admitted(policies, mine[expert], {"app": "curious-pod"}, EXPERT_METRICS_PORT)
    assert admitted(policies, mine[expert], {"app": "prometheus"}, EXPERT_METRICS_PORT)
    for own in ("mix-gateway", expert):
        assert admitted(policies, mine["mix-redis"], mine[own], REDIS_PORT)
    assert not admitted(policies, mine["mix-redis"], theirs["other-gateway"], REDIS_PORT)
    assert not admitted(policies, mine["mix-redis"], {"app": "curious-pod"}, REDIS_PORT)


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_policies_validate_against_the_kubernetes_schema(version):
    policies = network_policy_manifests(parse_spec("mix", "team", SPEC), metrics_from=[{"podSelector": {}}])
    assert len(policies) == 2
    for m in policies:
        kubernetes_validate.validate(m, version, strict=True)
