"""NetworkPolicies: which pods may reach the expert servers, the gateways and Redis, decided by label
selectors. Evaluated by the same NetworkPolicy semantics the testbed's enforcer loads into iptables
(scripts/k8s/netpol_rules.py, itself tested against the Kubernetes rules in tests/security), against the
labels of the pods the operator really builds."""

from __future__ import annotations

import sys
from pathlib import Path

import kubernetes_validate
import pytest

from eaas.operator.manifests import ClusterFeatures, desired_manifests
from eaas.operator.network_policies import network_policy_manifests, operator_peer
from eaas.operator.spec import (EXPERT_GRPC_PORT, EXPERT_METRICS_PORT, GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT,
                                REDIS_PORT, parse_spec)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts" / "k8s"))
from netpol_rules import admitted  # noqa: E402

SPEC = {"model": {"uri": "/models/tiny", "numExperts": 8, "numLayers": 4}, "image": "eaas:test",
        "experts": {"expertsPerReplica": 4}, "memPool": {"managed": True}}
NAMESPACES = [{"metadata": {"name": "team", "labels": {}}},
              {"metadata": {"name": "monitoring", "labels": {"role": "metrics"}}},
              {"metadata": {"name": "eaas-system", "labels": {"kubernetes.io/metadata.name": "eaas-system"}}}]
OPERATOR_LABELS = {"app.kubernetes.io/name": "eaas-operator", "app.kubernetes.io/instance": "eaas"}


def pods_of(name: str, spec: dict, namespace: str = "team") -> dict[str, dict]:
    """The pods the operator's Deployments make, by Deployment name (one replica each)."""
    manifests = desired_manifests(parse_spec(name, namespace, spec), {}, ClusterFeatures(True, "policy/v1"))
    return {m["metadata"]["name"]: {"metadata": {"namespace": namespace,
                                                 "labels": m["spec"]["template"]["metadata"]["labels"]},
                                    "spec": m["spec"]["template"]["spec"], "status": {"podIP": "10.244.0.9"}}
            for m in manifests if m["kind"] == "Deployment"}


def stranger(labels: dict, namespace: str = "team") -> dict:
    return {"metadata": {"namespace": namespace, "labels": labels}, "spec": {}, "status": {"podIP": "10.244.0.99"}}


@pytest.fixture
def pods():
    return pods_of("mix", SPEC), pods_of("other", SPEC)


def test_expert_servers_take_grpc_only_from_their_own_gateways(pods):
    mine, theirs = pods
    policies = network_policy_manifests(parse_spec("mix", "team", SPEC))
    experts = [name for name in mine if "-experts-" in name]
    assert len(experts) == 2
    for expert in experts:
        can = lambda source, port: admitted(policies, NAMESPACES, mine[expert], source, port)  # noqa: E731
        assert can(mine["mix-gateway"], EXPERT_GRPC_PORT)
        assert not can(theirs["other-gateway"], EXPERT_GRPC_PORT)  # another deployment's gateway
        assert not can(stranger({"app": "curious-pod"}), EXPERT_GRPC_PORT)
        sibling = next(e for e in experts if e != expert)
        assert not can(mine[sibling], EXPERT_GRPC_PORT)
        assert not can(stranger(mine["mix-gateway"]["metadata"]["labels"], "monitoring"), EXPERT_GRPC_PORT)
        assert can(stranger({"app": "prometheus"}), EXPERT_METRICS_PORT)
        assert not can(mine["mix-gateway"], 22)  # nothing else is open


def test_metrics_and_gateways_can_be_limited_and_redis_takes_only_the_deployments_pods(pods):
    mine, theirs = pods
    limited = {**SPEC, "security": {"metricsFrom": [{"namespaceSelector": {"matchLabels": {"role": "metrics"}}}],
                                    "gatewayFrom": [{"podSelector": {"matchLabels": {"role": "client"}}}]}}
    policies = network_policy_manifests(parse_spec("mix", "team", limited))
    expert = next(name for name in mine if "-experts-" in name)
    assert not admitted(policies, NAMESPACES, mine[expert], stranger({"app": "curious-pod"}), EXPERT_METRICS_PORT)
    assert admitted(policies, NAMESPACES, mine[expert], stranger({"app": "prom"}, "monitoring"), EXPERT_METRICS_PORT)
    for port in (GATEWAY_GRPC_PORT, GATEWAY_HTTP_PORT):
        assert admitted(policies, NAMESPACES, mine["mix-gateway"], stranger({"role": "client"}), port)
        assert not admitted(policies, NAMESPACES, mine["mix-gateway"], stranger({"app": "curious-pod"}), port)
    for own in ("mix-gateway", expert):
        assert admitted(policies, NAMESPACES, mine["mix-redis"], mine[own], REDIS_PORT)
    assert not admitted(policies, NAMESPACES, mine["mix-redis"], theirs["other-gateway"], REDIS_PORT)
    assert not admitted(policies, NAMESPACES, mine["mix-redis"], stranger({"app": "curious-pod"}), REDIS_PORT)


def test_gateways_are_open_to_anyone_by_default_on_their_two_ports_only(pods):
    mine, _ = pods
    policies = network_policy_manifests(parse_spec("mix", "team", SPEC))
    anyone = stranger({}, "monitoring")
    assert admitted(policies, NAMESPACES, mine["mix-gateway"], anyone, GATEWAY_GRPC_PORT)
    assert admitted(policies, NAMESPACES, mine["mix-gateway"], anyone, GATEWAY_HTTP_PORT)
    assert not admitted(policies, NAMESPACES, mine["mix-gateway"], anyone, 9999)


@pytest.mark.parametrize("operator_namespace", ["team", "eaas-system"])
def test_the_operator_pod_reaches_the_managed_redis_from_its_own_namespace(pods, operator_namespace):
    mine, _ = pods
    peer = operator_peer(operator_namespace, OPERATOR_LABELS, "team")
    policies = network_policy_manifests(parse_spec("mix", "team", SPEC), peer)
    operator = stranger(OPERATOR_LABELS, operator_namespace)
    assert admitted(policies, NAMESPACES, mine["mix-redis"], operator, REDIS_PORT)
    impostor_ns = "monitoring" if operator_namespace == "eaas-system" else "eaas-system"
    if operator_namespace == "eaas-system":  # same labels in a third namespace: refused
        assert not admitted(policies, NAMESPACES, mine["mix-redis"], stranger(OPERATOR_LABELS, impostor_ns),
                            REDIS_PORT)
    assert operator_peer(None, None, "team") is None


@pytest.mark.parametrize("version", ["1.25.0", kubernetes_validate.latest_version()])
def test_policies_validate_against_the_kubernetes_schema(version):
    spec = {**SPEC, "security": {"metricsFrom": [{"podSelector": {}}],
                                 "gatewayFrom": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}}
    policies = network_policy_manifests(parse_spec("mix", "team", spec), operator_peer("x", OPERATOR_LABELS, "team"))
    assert len(policies) == 3
    for m in policies:
        kubernetes_validate.validate(m, version, strict=True)
