"""The cost-vs-SLO frontier's comparison: a policy's violating tokens interpolated along its curve at another's
cost, and nothing outside the range it was measured over."""

from __future__ import annotations

import pytest

from eaas.plan.planner import violations_at_cost


def test_violations_are_interpolated_along_the_curve_at_a_given_cost():
    curve = [{"ratio": 0.6, "violating_tokens": 100.0}, {"ratio": 0.4, "violating_tokens": 300.0},
             {"ratio": 0.5, "violating_tokens": 180.0}]  # any order
    assert violations_at_cost(curve, 0.45) == pytest.approx(240.0)
    assert violations_at_cost(curve, 0.6) == pytest.approx(100.0)


def test_outside_the_measured_costs_there_is_no_answer():
    curve = [{"ratio": 0.4, "violating_tokens": 300.0}, {"ratio": 0.6, "violating_tokens": 100.0}]
    assert violations_at_cost(curve, 0.39) is None and violations_at_cost(curve, 0.61) is None
    assert violations_at_cost([], 0.5) is None
