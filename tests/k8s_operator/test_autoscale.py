"""The autoscaler's decision function on synthetic load series (no cluster, no Redis)."""

from __future__ import annotations

import math

import pytest

from eaas.operator.autoscale import Recommendation, ScalingPolicy, decide_replicas, replicas_for_load

T0 = 1_000_000.0


def simulate(loads: list[float], policy: ScalingPolicy, start: int = 1, step: float = 1.0) -> list[int]:
    """Replicas after each decision when one decision runs every `step` seconds on the given loads."""
    current, history, out = start, (), []
    for i, load in enumerate(loads):
        decision = decide_replicas(current, load, history, T0 + i * step, policy)
        current, history = decision.replicas, decision.history
        out.append(current)
    return out


def test_replicas_for_load_is_ceil_of_load_over_target_clamped():
    policy = ScalingPolicy(target_per_replica=100, min_replicas=1, max_replicas=5)
    assert [replicas_for_load(x, policy) for x in (0, 1, 100, 100.01, 250, 499.9, 500, 501, 10_000)] == \
        [1, 1, 1, 2, 3, 5, 5, 5, 5]
    assert replicas_for_load(0, ScalingPolicy(100, min_replicas=2, max_replicas=3)) == 2


def test_replicas_for_load_rejects_negative_and_nan():
    policy = ScalingPolicy(100, 1, 5)
    with pytest.raises(ValueError):
        replicas_for_load(-1, policy)
    with pytest.raises(ValueError):
        replicas_for_load(math.nan, policy)


def test_hot_group_scales_up_at_once_without_scale_up_window():
    policy = ScalingPolicy(100, 1, 5, scale_up_window=0, scale_down_window=3)
    assert simulate([50, 350, 350], policy) == [1, 4, 4]


def test_cold_group_shrinks_to_min_only_after_scale_down_window():
    # Last high recommendation at T0+2; a 3 s window keeps 4 replicas until T0+5.
    policy = ScalingPolicy(100, 1, 5, scale_up_window=0, scale_down_window=3)
    assert simulate([50, 350, 350, 100, 100, 100, 100, 100], policy) == [1, 4, 4, 4, 4, 1, 1, 1]


def test_scale_down_goes_to_highest_recommendation_in_window_not_straight_to_min():
    policy = ScalingPolicy(100, 1, 8, scale_up_window=0, scale_down_window=2)
    # recommendations 8, 5, 3, 1, ...: each step down waits until the higher ones left the 2 s window
    assert simulate([800, 500, 300, 0, 0, 0, 0], policy, start=8) == [8, 8, 5, 3, 1, 1, 1]


def test_spike_shorter_than_scale_up_window_adds_no_replica():
    policy = ScalingPolicy(100, 1, 5, scale_up_window=2, scale_down_window=0)
    assert simulate([100, 400, 100, 100], policy) == [1, 1, 1, 1]


def test_sustained_load_scales_up_after_scale_up_window():
    policy = ScalingPolicy(100, 1, 5, scale_up_window=2, scale_down_window=0)
    assert simulate([100, 400, 100, 400, 400, 400], policy) == [1, 1, 1, 1, 4, 4]


def test_oscillating_load_does_not_flap_with_a_scale_down_window():
    loads = [400, 100] * 8
    stabilized = simulate(loads, ScalingPolicy(100, 1, 5, scale_up_window=0, scale_down_window=5))
    assert stabilized == [4] * 16
    # The same series without a window flaps every tick: the window is what prevents it.
    unstabilized = simulate(loads, ScalingPolicy(100, 1, 5, scale_up_window=0, scale_down_window=0))
    assert unstabilized == [4, 1] * 8


def test_without_history_current_count_holds_for_the_window():
    # A restarted operator that lost its memory must not drop a busy group at once.
    policy = ScalingPolicy(100, 1, 5, scale_up_window=0, scale_down_window=3)
    assert simulate([0, 0, 0, 0, 0], policy, start=4) == [4, 4, 4, 1, 1]


def test_history_keeps_only_what_the_longest_window_needs():
    policy = ScalingPolicy(100, 1, 5, scale_up_window=1, scale_down_window=3)
    history = tuple(Recommendation(T0 + i, 2) for i in range(10))
    decision = decide_replicas(2, 200, history, T0 + 10, policy)
    assert [h.time for h in decision.history] == [T0 + 8, T0 + 9, T0 + 10]
    assert decision.history[-1] == Recommendation(T0 + 10, 2)


def test_changed_bounds_apply_immediately():
    history = (Recommendation(T0, 6),)
    assert decide_replicas(6, 600, history, T0 + 1, ScalingPolicy(100, 1, 3, 0, 300)).replicas == 3
    assert decide_replicas(1, 0, (Recommendation(T0, 1),), T0 + 1, ScalingPolicy(100, 2, 3, 0, 300)).replicas == 2


def test_two_groups_scale_independently():
    policy = ScalingPolicy(100, 1, 4, scale_up_window=0, scale_down_window=2)
    hot = [300, 350, 390, 400, 380, 360]
    cold = [150, 150, 0, 0, 0, 0]
    assert simulate(hot, policy) == [3, 4, 4, 4, 4, 4]
    # the last recommendation of 2 is at T0+1: it leaves the 2 s window at T0+3
    assert simulate(cold, policy) == [2, 2, 2, 1, 1, 1]
