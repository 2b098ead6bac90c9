"""Per-expert-group autoscaling decision: a pure function of load, recommendation history and time.

Semantics follow the HorizontalPodAutoscaler's stabilization windows:
- the raw recommendation is ceil(tokens/s ÷ target per replica), clamped to [minReplicas, maxReplicas];
- scale up only to the *minimum* recommendation seen within the scale-up window (a short spike that
  already faded does not add replicas);
- scale down only to the *maximum* recommendation seen within the scale-down window (a short lull does
  not remove replicas), so a group never flaps.
Without history the current count counts as recommended now, so nothing moves before a window passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ScalingPolicy:
    target_per_replica: float
    min_replicas: int
    max_replicas: int
    scale_up_window: float = 0.0
    scale_down_window: float = 300.0

    def clamp(self, replicas: int) -> int:
        return min(max(replicas, self.min_replicas), self.max_replicas)


@dataclass(frozen=True)
class Recommendation:
    time: float  # unix seconds
    replicas: int


@dataclass(frozen=True)
class Decision:
    replicas: int
    recommendation: int
    history: tuple[Recommendation, ...]  # what to keep for the next decision


def replicas_for_load(tokens_per_second: float, policy: ScalingPolicy) -> int:
    """Replicas that keep each one at or below the target load, clamped to the policy's bounds."""
    if tokens_per_second < 0 or math.isnan(tokens_per_second):
        raise ValueError(f"load must be a non-negative number, got {tokens_per_second}")
    return policy.clamp(math.ceil(tokens_per_second / policy.target_per_replica))


def decide_replicas(current: int, tokens_per_second: float, history: tuple[Recommendation, ...] | list,
                    now: float, policy: ScalingPolicy) -> Decision:
    """The group's next replica count given its current count, load now, and past recommendations."""
    recommendation = replicas_for_load(tokens_per_second, policy)
    if not history:
        # No memory (new group, lost status): act as if the current count was just recommended, so
        # a restart cannot shrink or grow a group before its windows have passed.
        history = (Recommendation(now, policy.clamp(current)),)
    up_floor = now - policy.scale_up_window
    down_floor = now - policy.scale_down_window
    up_limit = recommendation  # min over the scale-up window
    down_limit = recommendation  # max over the scale-down window
    for past in history:
        if past.time > up_floor:
            up_limit = min(up_limit, past.replicas)
        if past.time > down_floor:
            down_limit = max(down_limit, past.replicas)
    current = policy.clamp(current)  # bounds changed in the spec take effect at once
    if current < up_limit:
        replicas = up_limit
    elif current > down_limit:
        replicas = down_limit
    else:
        replicas = current
    oldest_needed = now - max(policy.scale_up_window, policy.scale_down_window)
    kept = tuple(p for p in history if p.time > oldest_needed) + (Recommendation(now, recommendation),)
    return Decision(replicas=policy.clamp(replicas), recommendation=recommendation, history=kept)
