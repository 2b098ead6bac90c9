"""autoscaling.policy: predictive — the spec field, the load history read back from Redis windows, and the
decision: on a ramp it asks for replicas before the reactive policy does; on flat load it does not."""

from __future__ import annotations

import pytest

from eaas.operator.autoscale import ScalingPolicy, decide_replicas
from eaas.operator.forecast import ForecastSettings, decision_loads, predictive_policy
from eaas.operator.load import expert_rates, group_rates, group_window_readings, redis_client
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
    readings = group_window_readings(client, "mix", groups, now, lookback=8)
    # the windows themselves, oldest first, at their start seconds, as tokens/s
    assert [t for t, _ in readings[0]] == [2_000_000.0 - 10 * (k + 1) for k in range(7, -1, -1)]
    assert [y for _, y in readings[0]] == [3000.0 - 80 * k for k in range(7, -1, -1)]
    assert [y for _, y in readings[1]] == [1000.0] * 8
    loads = group_rates(expert_rates(client, "mix", now, 3), groups)  # what reactive decides on: 30 s mean
    loads_now = [loads["g0"], loads["g1"]]
    assert loads_now == [pytest.approx(2920.0), pytest.approx(1000.0)]
    predicted = decision_loads(loads_now, readings, ForecastSettings(horizon_s=75.0))
    assert predicted[0] == pytest.approx(3000.0 + 8.0 * 75)  # the ramp (+8 tokens/s per s), 75 s ahead; no spread
    assert predicted[1] == pytest.approx(1000.0)  # flat and no burst anywhere: no headroom, as reactive
    policy = ScalingPolicy(target_per_replica=500, min_replicas=1, max_replicas=20)
    reactive = decide_replicas(6, loads_now[0], (), now, policy)
    predictive = decide_replicas(6, predicted[0], (), now, predictive_policy(policy, 75.0))
    assert predictive.recommendation > reactive.recommendation
    flat_policy = ScalingPolicy(target_per_replica=300, min_replicas=1, max_replicas=20)
    assert decide_replicas(4, predicted[1], (), now, flat_policy).recommendation == \
        decide_replicas(4, loads_now[1], (), now, flat_policy).recommendation


@pytest.mark.redis
def test_window_readings_count_an_absent_window_as_no_traffic(redis_server):
    client = redis_client(redis_server.url)
    now = 3_000_005.0
    for i in (0, 2):  # the window 3_000_000 - 20 is missing
        client.hset(f"eaas:gap:load:{3_000_000 - 10 * (i + 1)}", mapping={"0": 500})
    readings = group_window_readings(client, "gap", expert_groups(8, 4), now, lookback=3)
    assert readings[0] == [(2_999_970.0, 50.0), (2_999_980.0, 0.0), (2_999_990.0, 50.0)]
    assert readings[1] == [(2_999_970.0, 0.0), (2_999_980.0, 0.0), (2_999_990.0, 0.0)]
