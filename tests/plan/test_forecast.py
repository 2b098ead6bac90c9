"""The predictive policy's forecaster (operator/forecast.py), alone: trend, burst headroom, routing affinity."""

from __future__ import annotations

import pytest

from eaas.operator.forecast import ForecastSettings, fit_trend, forecast_loads, routed_forecasts


def test_a_steady_ramp_is_extrapolated_one_horizon_ahead():
    ramp = [(t * 15.0, 100.0 + 2.0 * t * 15.0) for t in range(8)]  # +2 tokens/s every second
    [forecast] = forecast_loads([ramp], ForecastSettings(horizon_s=60.0, burst_z=2.0))
    assert forecast == pytest.approx(ramp[-1][1] + 2.0 * 60.0)  # exact line: no spread, no headroom


def test_a_falling_load_forecasts_lower_but_never_below_zero():
    fall = [(t * 15.0, 300.0 - 10.0 * t * 15.0) for t in range(3)]
    assert forecast_loads([fall], ForecastSettings(horizon_s=60.0))[0] == 0.0


def test_a_jumpy_group_keeps_headroom_a_smooth_one_does_not():
    smooth = [(t * 15.0, 100.0) for t in range(8)]
    jumpy = [(t * 15.0, 100.0 + (40.0 if t % 2 else -40.0)) for t in range(8)]
    flat, bursty = forecast_loads([smooth, jumpy], ForecastSettings(horizon_s=75.0, burst_z=2.0))
    assert flat == pytest.approx(100.0)
    fit = fit_trend(jumpy, 8)
    assert fit.spread > 40.0
    assert bursty > 100.0 + 2.0 * 40.0 - 20.0  # the trend of an alternating series is small


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
