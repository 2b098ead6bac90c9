"""Hostile MoEDeployment specs (hypothesis): whatever reaches the operator (an outdated CRD, a hand-edited
object), parse_spec returns a spec or raises SpecError — nothing else — and the builders turn every
accepted spec into manifests without an exception."""

from __future__ import annotations

import math

from hypothesis import example, given
from hypothesis import strategies as st

from eaas.operator.manifests import ClusterFeatures, desired_manifests
from eaas.operator.spec import SpecError, parse_spec

FEATURES = ClusterFeatures(grpc_probe=True, pdb_api_version="policy/v1")
SCALARS = (st.none() | st.booleans() | st.integers(-10, 10) | st.integers() |
           st.floats() | st.text(max_size=12) | st.sampled_from([10**12, -1, 0, "8", "1Gi", math.nan]))
JUNK = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def _maybe(value_strategy):
    return st.one_of(value_strategy, JUNK)


SPECS = st.fixed_dictionaries({}, optional={
    "model": _maybe(st.fixed_dictionaries({}, optional={
        "uri": _maybe(st.sampled_from(["/models/m", "hf://org/m", ""])),
        "numExperts": _maybe(st.integers(-2, 70) | st.sampled_from([4096, 4097, 10**9])),
        "numLayers": _maybe(st.integers(-2, 40) | st.sampled_from([1024, 1025, 10**9]))})),
    "image": _maybe(st.sampled_from(["eaas:test", ""])),
    "imagePullPolicy": _maybe(st.sampled_from(["IfNotPresent", "Always"])),
    "gateway": _maybe(st.fixed_dictionaries({}, optional={
        "replicas": _maybe(st.integers(-1, 5) | st.just(10**9)),
        "resources": _maybe(st.fixed_dictionaries({}, optional={"limits": _maybe(st.just({"cpu": 2}))})),
        "nodeSelector": JUNK, "tolerations": JUNK})),
    "experts": _maybe(st.fixed_dictionaries({}, optional={
        "expertsPerReplica": _maybe(st.integers(-2, 70) | st.just(10**9)),
        "minReplicas": _maybe(st.integers(-2, 6) | st.just(10**9)),
        "maxReplicas": _maybe(st.integers(-2, 6) | st.just(10**9)),
        "resources": JUNK, "nodeSelector": JUNK, "tolerations": JUNK})),
    "memPool": _maybe(st.fixed_dictionaries({}, optional={
        "managed": _maybe(st.booleans()), "redis": _maybe(st.fixed_dictionaries({"url": _maybe(st.just("redis://r:6379/0"))})),
        "redisImage": JUNK})),
    "autoscaling": _maybe(st.fixed_dictionaries({}, optional={
        "targetTokensPerSecondPerReplica": _maybe(st.floats() | st.integers(-1, 10)),
        "policy": _maybe(st.sampled_from(["reactive", "predictive", "magic"])),
        "intervalSeconds": _maybe(st.integers(-1, 100)), "loadWindows": _maybe(st.integers(-1, 10))})),
})


@given(st.text(min_size=1, max_size=70), SPECS | JUNK)
@example("mix", {"model": {"uri": "/m", "numExperts": 10**9, "numLayers": 1}, "image": "i",
                 "experts": {"expertsPerReplica": 1}})
@example("mix", {"model": {"uri": "/m", "numExperts": -4, "numLayers": 1}, "image": "i",
                 "experts": {"expertsPerReplica": 1}})
@example("mix", {"model": {"uri": "/m", "numExperts": 8, "numLayers": 1}, "image": "i",
                 "experts": {"expertsPerReplica": 2}, "autoscaling": {"targetTokensPerSecondPerReplica": math.nan}})
@example("mix", {"model": ["not", "an", "object"]})
def test_specs_parse_or_raise_spec_error_and_accepted_specs_build(name, spec):
    try:
        moe = parse_spec(name, "team", spec)
    except SpecError as exc:
        assert str(exc)
        return
    assert 1 <= moe.num_experts <= 4096 and 1 <= moe.experts_per_replica
    assert moe.autoscaling.target_tokens_per_second_per_replica > 0
    manifests = desired_manifests(moe, {}, FEATURES)
    assert manifests and all(m["metadata"]["name"] for m in manifests)
