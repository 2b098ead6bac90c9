"""Predictive load forecast for expert groups: each group's tokens/s one start-up delay from now.

A pure function of past load readings, so the operator (autoscaling.policy: predictive) and the planner
(`eaas plan`) run the same code. The readings are the load windows themselves (10 s each, as gateways
write them to Redis), not the autoscaler's 30 s mean: a burst that a 30 s mean smooths away (a few long
prompts prefilled in one step) shows in the 10 s windows' spread, and that spread is what the headroom is
made of. Three signals:
- trend: the least-squares line through a group's last readings (10 minutes by default: long enough that
  minute-scale bursts are noise around the line, not its slope), extrapolated `horizon_s` ahead (a replica
  asked for now serves only after its start-up delay, so that is when its load matters); a falling line
  is not extrapolated: scale-down follows what is seen, not what is guessed;
- burst statistics: the readings' spread around their lines, relative to the level and pooled over all
  groups (load-weighted), x `burst_z` x a group's level is added as headroom. Pooled because bursts are
  mostly the whole deployment's traffic moving at once, and because a decode step waits for the slowest
  group: every group keeps the same relative margin, where per-group spreads from noisy readings would
  leave some groups with less margin than others (and those set the step time). At low traffic the
  relative spread grows (a prompt burst is as big as at the peak, the level is not), so the margin does:
  standing headroom follows the bursts measured now, not a fixed fraction of the target;
- routing affinity: a group's load follows the load of the groups that route tokens into it (the experts a
  token picks in one layer predict the next layer's, "Patterns behind Chaos", arXiv 2510.05497), so each
  group's trend forecast is blended with the affinity-weighted trend forecasts of the others.
The autoscaler then treats max(load now, forecast) as the load (operator/autoscale.py decides replicas),
with its scale-down hold cut to the horizon (predictive_policy): the forecast's margin replaces the long
hold's, so the group gives replicas back sooner after a burst and spends less at the same target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

from .autoscale import ScalingPolicy

ASSUMED_STARTUP_S = 60.0  # the operator's horizon: a replica's start-up (not in the spec) + one interval


@dataclass(frozen=True)
class ForecastSettings:
    horizon_s: float                # how far ahead: replica start-up delay + one decision interval
    lookback: int = 60              # load windows used for the trend and the spread (60 x 10 s = 10 min)
    burst_z: float = 1.05           # headroom in (pooled, relative) standard deviations around the trend:
    #                                 the most (in steps of 0.05) that spends no more than reactive in
    #                                 benchmarks/plan_targets.py (default 24 h trace; seeds 1 and 2 checked)
    affinity_weight: float = 0.3    # share of the routed (affinity) forecast in the blend


@dataclass(frozen=True)
class TrendFit:
    level: float   # the fitted line at the last reading
    slope: float   # tokens/s per second
    spread: float  # standard deviation of the readings around the line


def fit_trend(readings: Sequence[tuple[float, float]], lookback: int) -> TrendFit:
    """Least-squares line through the last `lookback` (time, load) readings, oldest first."""
    points = list(readings)[-lookback:]
    if not points:
        return TrendFit(0.0, 0.0, 0.0)
    if len(points) == 1:
        return TrendFit(points[0][1], 0.0, 0.0)
    n = len(points)
    t_mean = sum(t for t, _ in points) / n
    y_mean = sum(y for _, y in points) / n
    var_t = sum((t - t_mean) ** 2 for t, _ in points)
    slope = sum((t - t_mean) * (y - y_mean) for t, y in points) / var_t if var_t > 0 else 0.0
    residuals = [y - (y_mean + slope * (t - t_mean)) for t, y in points]
    spread = math.sqrt(sum(r * r for r in residuals) / max(1, n - 2)) if n > 2 else abs(residuals[-1])
    return TrendFit(y_mean + slope * (points[-1][0] - t_mean), slope, spread)


def trend_forecast(fit: TrendFit, horizon_s: float) -> float:
    """The line horizon_s ahead when rising; its level now when falling (scale down on what is seen)."""
    return max(0.0, fit.level + max(0.0, fit.slope) * horizon_s)


def routed_forecasts(forecasts: Sequence[float], affinity: Sequence[Sequence[float]]) -> list[float]:
    """Load routed into each group: sum_j forecast_j * affinity[j][g] / sum_g' affinity[j][g'].

    affinity[j][g]: how often a token on group j in one layer goes to group g in the next (any scale per
    row; rows are normalised). A row of zeros routes nothing.
    """
    out = [0.0] * len(forecasts)
    for j, row in enumerate(affinity):
        total = sum(row)
        if total <= 0:
            continue
        for g, a in enumerate(row):
            out[g] += forecasts[j] * a / total
    return out


def forecast_loads(readings: Sequence[Sequence[tuple[float, float]]], settings: ForecastSettings,
                   affinity: Sequence[Sequence[float]] | None = None) -> list[float]:
    """Each group's forecast tokens/s at now + horizon_s: trend (blended with routed trends) + burst headroom.

    readings[g]: group g's (time, tokens/s) readings, oldest first. Never below the latest reading's level
    minus nothing: the result is >= 0; the caller takes max(load now, forecast) to decide.
    """
    fits = [fit_trend(r, settings.lookback) for r in readings]
    own = [trend_forecast(f, settings.horizon_s) for f in fits]
    if affinity is not None and settings.affinity_weight > 0:
        routed = routed_forecasts(own, affinity)
        w = settings.affinity_weight
        own = [(1 - w) * o + w * r for o, r in zip(own, routed)]
    relative = pooled_relative_spread(fits)
    return [max(0.0, o + settings.burst_z * relative * max(0.0, f.level)) for o, f in zip(own, fits)]


def pooled_relative_spread(fits: Sequence[TrendFit]) -> float:
    """sqrt(sum spread^2 / sum level^2): the groups' common relative spread, weighted by load."""
    levels = sum(max(0.0, f.level) ** 2 for f in fits)
    return math.sqrt(sum(f.spread ** 2 for f in fits) / levels) if levels > 0 else 0.0


def predictive_policy(policy: ScalingPolicy, horizon_s: float) -> ScalingPolicy:
    """The forecast carries the burst headroom a long scale-down hold is for: hold only as long as a
    replacement takes to start (the horizon)."""
    return replace(policy, scale_down_window=min(policy.scale_down_window, horizon_s))


def decision_loads(loads_now: Sequence[float], readings: Sequence[Sequence[tuple[float, float]]],
                   settings: ForecastSettings, affinity: Sequence[Sequence[float]] | None = None) -> list[float]:
    """What the autoscaler decides on under the predictive policy: max(load now, forecast), per group."""
    return [max(now, f) for now, f in zip(loads_now, forecast_loads(readings, settings, affinity))]
