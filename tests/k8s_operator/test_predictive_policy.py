"""autoscaling.policy: predictive — the spec field, the load history read back from Redis windows, and the
decision: on a ramp it asks for replicas before the reactive policy does; on flat load it does not."""

from __future__ import annotations

import pytest

from eaas.operator.autoscale import ScalingPolicy, decide_replicas
from eaas.operator.forecast import ForecastSettings, decision_loads, predictive_policy
from eaas.operator.load import group_load_readings, redis_client
from eaas.operator.spec import SpecError, parse_spec
from eaas.topology import expert_groups


def spec(**autoscaling):
    return parse_spec("mix", "team", {"model": {"uri": "/m", "numExperts": 8, "numLayers": 2}, "image": "eaas:test",
                                      "experts": {"expertsPerReplica": 4}, "autoscaling": autoscaling})


def test_policy_defaults_to_reactive_accepts_predictive_and_refuses_others():
    assert spec().autoscaling.policy == "reactive"
    assert spec(policy="predictive").autoscaling.policy == "predictive"
    with pytest.raises(SpecError, match="reactive or predictive"):
        spec(policy="clairvoyant")


def test_predictive_holds_scale_down_only_for_the_horizon():
    policy = ScalingPolicy(target_per_replica=100, min_replicas=1, max_replicas=10, scale_down_window=300)
    assert predictive_policy(policy, 75).scale_down_window == 75
    assert predictive_policy(policy, 600).scale_down_window == 300


@pytest.mark.redis
def test_on_a_ramp_predictive_scales_before_reactive_and_not_on_flat_load(redis_server):
    client = redis_client(redis_server.url)
    now = 2_000_005.0
    for i in range(30):  # 10 s windows back from now: g0 (experts 0-3) ramps up, g1 stays flat
        bucket = 2_000_000 - 10 * (i + 1)
        client.hset(f"eaas:mix:load:{bucket}", mapping={"1": 10 * (3000 - 80 * i), "5": 10 * 1000})
    groups = expert_groups(8, 4)
    readings = group_load_readings(client, "mix", groups, now, interval_s=15, windows=3, lookback=8)
    assert [t for t, _ in readings[0]] == [now - 15 * k for k in range(7, -1, -1)]
    assert readings[0][-1][1] > readings[0][0][1] and readings[1][0][1] == readings[1][-1][1] == 1000.0
    loads_now = [readings[0][-1][1], readings[1][-1][1]]
    predicted = decision_loads(loads_now, readings, ForecastSettings(horizon_s=75.0))
    assert predicted[0] > loads_now[0] + 0.9 * 80 / 10 * 75  # the ramp (+8 tokens/s per s), 75 s ahead
    # the flat group takes the deployment's pooled relative spread: here only the ramp's small wobble
    # around its line (10 s windows read at 15 s), so ~1% headroom and the same replicas as reactive
    assert 1000.0 <= predicted[1] < 1030.0
    policy = ScalingPolicy(target_per_replica=500, min_replicas=1, max_replicas=20)
    reactive = decide_replicas(6, loads_now[0], (), now, policy)
    predictive = decide_replicas(6, predicted[0], (), now, predictive_policy(policy, 75.0))
    assert predictive.recommendation > reactive.recommendation
    flat_policy = ScalingPolicy(target_per_replica=300, min_replicas=1, max_replicas=20)
    assert decide_replicas(4, predicted[1], (), now, flat_policy).recommendation == \
        decide_replicas(4, loads_now[1], (), now, flat_policy).recommendation
