"""The predictive policy's forecaster (operator/forecast.py), alone: trend, pooled burst headroom, routing
affinity."""

from __future__ import annotations

import pytest

from eaas.operator.forecast import (ForecastSettings, fit_trend, forecast_loads, pooled_relative_spread,
                                    routed_forecasts)


def test_a_steady_ramp_is_extrapolated_one_horizon_ahead():
    ramp = [(t * 15.0, 100.0 + 2.0 * t * 15.0) for t in range(8)]  # +2 tokens/s every second
    [forecast] = forecast_loads([ramp], ForecastSettings(horizon_s=60.0, burst_z=2.0))
    assert forecast == pytest.approx(ramp[-1][1] + 2.0 * 60.0)  # exact line: no spread, no headroom


def test_a_falling_load_is_not_extrapolated_down_scale_down_follows_what_is_seen():
    fall = [(t * 15.0, 300.0 - 4.0 * t * 15.0) for t in range(4)]  # exact line, 300 -> 120
    [forecast] = forecast_loads([fall], ForecastSettings(horizon_s=60.0))
    assert forecast == pytest.approx(120.0)  # the level now, not 120 - 4 x 60 = -120 clipped to 0


def test_headroom_is_the_groups_common_relative_spread():
    smooth = [(t * 15.0, 100.0) for t in range(8)]
    jumpy = [(t * 15.0, 300.0 + (60.0 if t % 2 else -60.0)) for t in range(8)]
    settings = ForecastSettings(horizon_s=75.0, burst_z=2.0)
    flat_alone = forecast_loads([smooth], settings)
    flat, bursty = forecast_loads([smooth, jumpy], settings)
    assert flat_alone == [pytest.approx(100.0)]  # nothing jumps: no headroom
    fits = [fit_trend(r, 8) for r in (smooth, jumpy)]
    relative = pooled_relative_spread(fits)
    assert relative == pytest.approx(fits[1].spread / ((100.0 ** 2 + fits[1].level ** 2) ** 0.5))
    # every group gets the same relative margin: the step waits for whichever group has the least
    assert (flat - 100.0) / 100.0 == pytest.approx(2.0 * relative)
    assert (bursty - fits[1].level - fits[1].slope * 75.0 * (fits[1].slope > 0)) / fits[1].level == \
        pytest.approx(2.0 * relative)
    assert 0 < relative < fits[1].spread / fits[1].level


def test_only_the_last_lookback_readings_count():
    old_spike = [(0.0, 10_000.0)] + [(t * 15.0, 50.0) for t in range(1, 9)]
    assert forecast_loads([old_spike], ForecastSettings(horizon_s=60.0, lookback=8)) == [pytest.approx(50.0)]


def test_routed_forecasts_keep_the_total_and_follow_the_affinity():
    affinity = [[0.0, 3.0], [1.0, 1.0]]  # everything on g0 goes to g1 next; g1 splits evenly
    routed = routed_forecasts([100.0, 40.0], affinity)
    assert routed == pytest.approx([20.0, 120.0])
    assert sum(routed) == pytest.approx(140.0)


def test_affinity_pulls_a_group_towards_the_load_routed_into_it():
    rising = [(t * 15.0, 100.0 + 10.0 * t) for t in range(8)]
    flat = [(t * 15.0, 100.0) for t in range(8)]
    settings = ForecastSettings(horizon_s=60.0, burst_z=0.0, affinity_weight=0.5)
    alone = forecast_loads([rising, flat], settings)
    linked = forecast_loads([rising, flat], settings, affinity=[[0.0, 1.0], [0.0, 1.0]])
    assert alone[1] == pytest.approx(100.0)
    assert linked[1] > 100.0 + 0.4 * (alone[0] - 100.0)  # half of the rising group's forecast flows in
