"""Pure decisions the handlers act on: replicas per group, when a refresh is due, when Redis recovered.

Each is a function of values (no API, no clock, no kopf), tested alone in tests/k8s_operator/test_decisions.py.
"""

from __future__ import annotations

from typing import Any

from .spec import MoESpec


def group_replicas(spec: MoESpec, current: dict[str, int]) -> dict[str, int]:
    """Replicas per expert group: the current count (autoscaler's or the cluster's) clamped to
    [minReplicas, maxReplicas]; a group without a count (new or re-shaped) starts at minReplicas."""
    return {g.name: min(max(int(current.get(g.name, spec.min_replicas)), spec.min_replicas), spec.max_replicas)
            for g in spec.groups}


def refresh_due(last_refresh: float | None, now: float, interval_seconds: float) -> bool:
    """The per-object interval gate of the refresh loop (monotonic seconds); the first pass is always due."""
    return last_refresh is None or now - last_refresh >= interval_seconds


def redis_recovered(conditions: list[dict[str, Any]]) -> bool:
    """Load was read after a pass that could not: the Degraded/RedisUnreachable condition must clear."""
    return any(c.get("type") == "Degraded" and c.get("status") == "True" and c.get("reason") == "RedisUnreachable"
               for c in conditions)
