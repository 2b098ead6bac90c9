"""The planner's replica policies as decisions alone: predictive reads each 10 s load window once (as the
operator reads them from Redis), scales up ahead of a rising trend, gives replicas back after a burst
within its horizon where reactive holds them for its 300 s window, and adds headroom in proportion to the
bursts its windows show."""

from __future__ import annotations

import numpy as np
import pytest

from eaas.operator.autoscale import ScalingPolicy
from eaas.operator.forecast import ForecastSettings, predictive_policy
from eaas.plan.policies import PredictivePolicy, ReactivePolicy

SCALING = ScalingPolicy(target_per_replica=100.0, min_replicas=1, max_replicas=50, scale_down_window=300.0)
HORIZON = 75.0


def predictive(z: float = 0.0) -> PredictivePolicy:
    return PredictivePolicy(predictive_policy(SCALING, HORIZON), forecast=ForecastSettings(HORIZON, burst_z=z))


def drive(policy, window_load, seconds: int, interval: int = 15, start: int = 0, replicas: int = 1) -> list[int]:
    """Steps the policy every `interval` s on the last 3 complete 10 s windows of window_load(t) (one group),
    as the simulator does; returns the replicas it asks for at each step."""
    current, out = np.array([replicas]), []
    for now in range(start + interval, start + seconds + 1, interval):
        complete = now // 10
        windows = [(b * 10, np.array([window_load(b * 10)])) for b in range(complete - 3, complete)]
        loads = np.mean([w for _, w in windows], axis=0)
        current = policy.decide(float(now), current, loads, windows)
        out.append(int(current[0]))
    return out


def test_predictive_reads_each_window_once_in_order():
    policy = predictive()
    drive(policy, lambda t: 100.0 + t, 120)
    starts = [t for t, _ in policy.readings[0]]
    assert starts == sorted(set(starts)) and starts == [float(10 * b) for b in range(0, 12)]
    assert [y for _, y in policy.readings[0]] == [100.0 + t for t in starts]


def test_only_the_last_lookback_windows_are_kept():
    policy = predictive()
    drive(policy, lambda t: 100.0, 60 * 20)
    assert len(policy.readings[0]) == ForecastSettings(HORIZON).lookback


def test_on_a_rising_trend_predictive_asks_for_replicas_before_reactive():
    ramp = lambda t: 200.0 + 2.0 * t  # noqa: E731  (+2 tokens/s every second: +150 over the horizon)
    reactive, ahead = drive(ReactivePolicy(SCALING), ramp, 600), drive(predictive(), ramp, 600)
    assert all(p >= r for p, r in zip(ahead, reactive))
    assert ahead[-1] >= reactive[-1] + 1  # 1.5 replicas' worth of load ahead


def test_after_a_burst_predictive_gives_replicas_back_within_its_horizon_reactive_after_300s():
    burst = lambda t: 2000.0 if 600 <= t < 660 else 200.0  # noqa: E731  (2 replicas' worth, 20 for a minute)
    times = list(range(15, 1201, 15))
    r, p = drive(ReactivePolicy(SCALING), burst, 1200), drive(predictive(), burst, 1200)
    assert max(r) == max(p) == 20

    def first_below(replicas, n):
        return next(t for t, k in zip(times, replicas) if t > 660 and k < n)
    # the last window holding the burst is read until ~690 s; then the horizon's hold (75 s) and one interval
    assert first_below(p, 20) <= 690 + HORIZON + 15
    assert first_below(p, 11) <= 690 + HORIZON + 15 + 15  # the 10 min trend's level keeps ~1/10 of the burst
    assert first_below(r, 20) >= 660 + 300  # reactive: the max over its 300 s scale-down window


def test_headroom_follows_the_bursts_the_windows_show():
    steady = lambda t: 1000.0  # noqa: E731
    spiky = lambda t: 1600.0 if (t // 10) % 6 == 0 else 880.0  # noqa: E731  (same 1000 mean, a 10 s spike a minute)
    calm, bursty = predictive(z=1.25), predictive(z=1.25)
    drive(calm, steady, 900, replicas=10)
    drive(bursty, spiky, 900, replicas=10)
    window = [(890.0, np.array([1000.0]))]
    assert calm.loads_for_decision(900.0, np.array([1000.0]), window)[0] == pytest.approx(1000.0)
    assert bursty.loads_for_decision(900.0, np.array([1000.0]), window)[0] > 1250.0  # ~1.25 x the 10 s spread
