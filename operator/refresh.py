"""The operator's refresh loop: every tick, each MoEDeployment whose autoscaling interval has passed gets
its load read, its groups scaled and its readiness written to `.status`.

One loop for the whole operator instead of a kopf timer per object: kopf timers need a finalizer on every
object, and a finalizer with no operator left makes `kubectl delete moed` hang (docs/operator.md).
It logs only what changed (a scale, Redis lost or back), never every pass.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Any, Callable

import redis

from eaas.topology import format_expert_ids

from . import load
from .autoscale import ScalingPolicy, decide_replicas
from .cluster import ChildObjects
from .forecast import ASSUMED_STARTUP_S, ForecastSettings, decision_loads, predictive_policy
from .decisions import group_replicas, redis_recovered, refresh_due
from .manifests import expert_service_name
from .spec import MoESpec, SpecError, parse_spec
from .status import groups_status, history_from_status, readiness_status, replicas_from_status, set_condition
from .tracking import ObjectState, Tracked

log = logging.getLogger("eaas.operator.refresh")
TICK_SECONDS = 0.1  # a pass starts at most this late; each object's autoscaling.intervalSeconds gates its work


def now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Refresher:
    def __init__(self, children: ChildObjects, tracked: Tracked,
                 redis_for: Callable[[MoESpec], redis.Redis | None]):
        self.children = children
        self.tracked = tracked
        self.redis_for = redis_for

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_SECONDS):
            for body in self.tracked.bodies():
                try:
                    self.refresh_if_due(body)
                except Exception as exc:  # one object's trouble (API hiccup) never stops the others
                    meta = body["metadata"]
                    log.warning("refresh of %s/%s failed: %s", meta["namespace"], meta["name"], exc)

    def refresh_if_due(self, body: dict[str, Any]) -> None:
        meta = body["metadata"]
        if meta.get("deletionTimestamp"):
            return
        try:
            moe = parse_spec(meta["name"], meta["namespace"], dict(body.get("spec") or {}))
        except SpecError:
            return  # reconcile() already reported it
        state = self.tracked.state(moe.namespace, moe.name, body.get("status") or {})
        now = time.monotonic()
        if not refresh_due(state.last_refresh, now, moe.autoscaling.interval_seconds):
            return
        state.last_refresh = now
        self.refresh(moe, body, state)

    def refresh(self, moe: MoESpec, body: dict[str, Any], state: ObjectState) -> None:
        """Read load, scale groups, write readiness and groups to `.status`."""
        with state.lock:
            states = self.children.deployment_states(moe.namespace, moe.name)
            conditions = state.conditions
            replicas = group_replicas(moe, replicas_from_status(moe, state.as_status()))
            loads, histories = None, {}
            if moe.autoscaling.enabled:
                try:
                    replicas, loads, histories = self.autoscale(moe, state.as_status(), states, body)
                    if redis_recovered(conditions):
                        conditions = set_condition(conditions, "Degraded", False, "AsExpected",
                                                   "load readable again", now_iso())
                        log.info("%s/%s: load statistics readable again", moe.namespace, moe.name)
                except redis.RedisError as exc:
                    if not redis_recovered(conditions):  # log the outage once, not every pass
                        log.warning("cannot read load for %s/%s: %s", moe.namespace, moe.name, exc)
                    conditions = set_condition(conditions, "Degraded", True, "RedisUnreachable",
                                               f"cannot read load statistics: {exc}", now_iso())
            readiness = readiness_status(moe, states, conditions, now_iso(), state.reshaping)
            state.conditions = readiness["conditions"]
            state.groups = groups_status(moe, replicas, states, loads, histories, state.as_status())
            self.children.patch_status(moe.namespace, moe.name, {**readiness, "groups": state.groups})

    def autoscale(self, moe: MoESpec, status: dict, states: dict, body: dict[str, Any]
                  ) -> tuple[dict[str, int], dict[str, float], dict[str, tuple]]:
        """Decide and patch each group's replicas from its load; returns (replicas, loads, histories)."""
        client = self.redis_for(moe)
        if client is None:
            raise redis.ConnectionError("no Redis configured (memPool or --redis-url) to read load from")
        now = time.time()
        loads = load.group_rates(load.expert_rates(client, moe.name, now, moe.autoscaling.load_windows), moe.groups)
        scaling = moe.autoscaling
        policy = ScalingPolicy(target_per_replica=scaling.target_tokens_per_second_per_replica,
                               min_replicas=moe.min_replicas, max_replicas=moe.max_replicas,
                               scale_up_window=scaling.scale_up_stabilization_seconds,
                               scale_down_window=scaling.scale_down_stabilization_seconds)
        decide_on = loads
        if scaling.policy == "predictive":
            horizon = ASSUMED_STARTUP_S + scaling.interval_seconds
            readings = load.group_window_readings(client, moe.name, moe.groups, now, ForecastSettings(horizon).lookback)
            decide_on = dict(zip([g.name for g in moe.groups], decision_loads(
                [loads[g.name] for g in moe.groups], readings, ForecastSettings(horizon))))
            policy = predictive_policy(policy, horizon)
        cluster = {g.name: states[expert_service_name(moe, g)].replicas for g in moe.groups
                   if expert_service_name(moe, g) in states}
        current = group_replicas(moe, {**replicas_from_status(moe, status), **cluster})
        replicas, histories = {}, {}
        for group in moe.groups:
            deployment = expert_service_name(moe, group)
            decision = decide_replicas(current[group.name], decide_on[group.name],
                                       history_from_status(moe, status, group), now, policy)
            histories[group.name] = decision.history
            replicas[group.name] = decision.replicas
            if deployment in states and decision.replicas != states[deployment].replicas:
                self.children.scale(moe.namespace, deployment, decision.replicas)
                message = f"{deployment}: {states[deployment].replicas} -> {decision.replicas} replicas " \
                          f"(experts {format_expert_ids(group.experts)}, {loads[group.name]:.1f} tokens/s)"
                log.info("scaled %s", message)
                self.children.post_event(body, "Scaled", message)
        return replicas, loads, histories
