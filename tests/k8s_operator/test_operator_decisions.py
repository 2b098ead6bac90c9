"""The operator's pure decisions (operator/decisions.py), each alone: no cluster, no clock, no kopf."""

from __future__ import annotations

from eaas.operator.decisions import group_replicas, redis_recovered, refresh_due
from eaas.operator.manifests import desired_manifests
from eaas.operator.features import ClusterFeatures
from eaas.operator.spec import parse_spec


def moe(experts_per_replica: int = 3, min_replicas: int = 2, max_replicas: int = 4):
    return parse_spec("mix", "team", {
        "model": {"uri": "/m", "numExperts": 8, "numLayers": 2}, "image": "eaas:test",
        "experts": {"expertsPerReplica": experts_per_replica, "minReplicas": min_replicas,
                    "maxReplicas": max_replicas}})


def test_group_replicas_clamps_counts_and_starts_new_groups_at_min():
    assert group_replicas(moe(), {"g0": 3, "g1": 9, "g2": 0}) == {"g0": 3, "g1": 4, "g2": 2}
    assert group_replicas(moe(), {}) == {"g0": 2, "g1": 2, "g2": 2}
    # counts of groups the spec no longer has are dropped
    assert group_replicas(moe(experts_per_replica=8), {"g0": 3, "g5": 4}) == {"g0": 3}


def test_builders_use_group_replicas():
    spec = moe()
    manifests = desired_manifests(spec, {"g0": 3, "g1": 9}, ClusterFeatures())
    replicas = {m["metadata"]["name"]: m["spec"]["replicas"] for m in manifests
                if m["kind"] == "Deployment" and "experts" in m["metadata"]["name"]}
    counts = group_replicas(spec, {"g0": 3, "g1": 9})
    assert replicas == {f"mix-experts-e{g.experts[0]}-{g.experts[-1]}": counts[g.name] for g in spec.groups}


def test_refresh_is_due_once_per_interval():
    assert refresh_due(None, 5.0, 15)
    assert not refresh_due(5.0, 19.9, 15)
    assert refresh_due(5.0, 20.0, 15)
    assert refresh_due(5.0, 6.0, 1)


def test_redis_recovery_clears_only_a_redis_outage():
    down = [{"type": "Degraded", "status": "True", "reason": "RedisUnreachable"}]
    assert redis_recovered(down)
    assert not redis_recovered([{"type": "Degraded", "status": "False", "reason": "RedisUnreachable"}])
    assert not redis_recovered([{"type": "Degraded", "status": "True", "reason": "ApplyFailed"}])
    assert not redis_recovered([])
