"""kopf handlers for MoEDeployment: thin I/O around the pure builders in spec/manifests/autoscale/status.

Registered on import; `eaas operator` (cli.py) imports this module and runs kopf.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
import redis

from eaas.topology import format_expert_ids

from . import load
from .autoscale import ScalingPolicy, decide_replicas
from .cluster import ChildObjects, load_kube_config, prunable_kinds
from .manifests import desired_manifests, expert_service_name
from .spec import GROUP, PLURAL, VERSION, MoESpec, SpecError, parse_spec
from .status import (groups_status, history_from_status, readiness_status, replicas_from_status,
                     set_condition)

# The timer ticks this often; each object's own autoscaling.intervalSeconds decides when work is due.
TICK_SECONDS = 1.0


@dataclass
class ObjectState:
    """The operator's own copy of one CR's status (conditions, groups with history), shared by the
    reconcile handler and the timer of that CR through kopf's per-object memo. Both write it whole
    to `.status`; keeping the truth here stops one from overwriting the other with a stale copy."""
    conditions: list[dict[str, Any]]
    groups: list[dict[str, Any]]
    lock: threading.Lock = field(default_factory=threading.Lock)

    def as_status(self) -> dict[str, Any]:
        return {"conditions": self.conditions, "groups": self.groups}


_STATE_INIT = threading.Lock()


def _object_state(memo: kopf.Memo, status: kopf.Status) -> ObjectState:
    """This CR's ObjectState, seeded from `.status` on first sight (so a restart keeps the history)."""
    with _STATE_INIT:
        if "state" not in memo:
            memo.state = ObjectState(conditions=list(status.get("conditions") or []),
                                     groups=list(status.get("groups") or []))
        return memo.state


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    settings.persistence.finalizer = "eaas.dev/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="eaas.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="eaas.dev")
    # Events: what we post with kopf.event, plus kopf's own warnings (not every log line).
    settings.posting.level = logging.WARNING
    memo.children = ChildObjects(load_kube_config())
    memo.features = memo.children.features()
    memo.redis_clients = {}
    logger.info("cluster features: %s; redis override: %s", memo.features, memo.get("redis_url_override"))


def _redis_for(spec_url: str | None, memo: kopf.Memo) -> redis.Redis | None:
    """A client for --redis-url if given, else for the CR's own Redis; None when there is neither."""
    url = memo.get("redis_url_override") or spec_url
    if not url:
        return None
    if url not in memo.redis_clients:
        memo.redis_clients[url] = load.redis_client(url)
    return memo.redis_clients[url]


def _invalid_spec(body: kopf.Body, state: ObjectState, patch: kopf.Patch, exc: SpecError) -> None:
    with state.lock:
        state.conditions = set_condition(state.conditions, "Degraded", True, "InvalidSpec", str(exc), _now_iso())
        patch.status["conditions"] = state.conditions
    kopf.warn(body, reason="InvalidSpec", message=str(exc))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
              body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Apply every child the spec asks for, delete the ones it no longer does, report in status."""
    state = _object_state(memo, status)
    try:
        moe = parse_spec(name, namespace, dict(spec))
    except SpecError as exc:
        _invalid_spec(body, state, patch, exc)
        return
    with state.lock:
        replicas = replicas_from_status(moe, state.as_status()) if moe.autoscaling.enabled else {}
        manifests = desired_manifests(moe, replicas, memo.features)
        kopf.adopt(manifests, owner=body)
        try:
            for manifest in manifests:
                memo.children.apply(manifest)
            removed = memo.children.prune(meta["uid"], namespace, name, manifests, prunable_kinds(memo.features))
        except Exception as exc:  # ApiException, connection errors: report, then let kopf retry
            state.conditions = set_condition(state.conditions, "Degraded", True, "ApplyFailed", str(exc)[:500],
                                             _now_iso())
            patch.status["conditions"] = state.conditions
            raise kopf.TemporaryError(f"applying children failed: {exc}", delay=10) from exc
        conditions = set_condition(state.conditions, "Degraded", False, "AsExpected", "all children applied",
                                   _now_iso())
        states = memo.children.deployment_states(namespace, name)
        desired = {g.name: m["spec"]["replicas"] for g in moe.groups for m in manifests
                   if m["kind"] == "Deployment" and m["metadata"]["name"] == expert_service_name(moe, g)}
        readiness = readiness_status(moe, states, conditions, _now_iso())
        state.conditions = readiness["conditions"]
        state.groups = groups_status(moe, desired, states, None, {}, state.as_status())
        patch.status.update(readiness)
        patch.status["groups"] = state.groups
        patch.status["observedGeneration"] = meta.get("generation")
        patch.status["redisUrl"] = moe.redis_url or ""
    message = f"applied {len(manifests)} objects: {len(moe.groups)} expert groups of " \
              f"{moe.experts_per_replica} experts, {moe.gateway_replicas} gateways"
    if removed:
        message += f"; removed {', '.join(removed)}"
    kopf.event(body, type="Normal", reason="Reconciled", message=message)


def _autoscale(moe: MoESpec, status: dict, states: dict, memo: kopf.Memo, body: kopf.Body,
               logger: logging.Logger) -> tuple[dict[str, int], dict[str, float], dict[str, tuple]]:
    """Decide and patch each group's replicas from its load; returns (replicas, loads, histories)."""
    client = _redis_for(moe.redis_url, memo)
    if client is None:
        raise redis.ConnectionError("no Redis configured (memPool or --redis-url) to read load from")
    now = time.time()
    rates = load.expert_rates(client, moe.name, now, moe.autoscaling.load_windows)
    loads = load.group_rates(rates, moe.groups)
    scaling = moe.autoscaling
    policy = ScalingPolicy(target_per_replica=scaling.target_tokens_per_second_per_replica,
                           min_replicas=moe.min_replicas, max_replicas=moe.max_replicas,
                           scale_up_window=scaling.scale_up_stabilization_seconds,
                           scale_down_window=scaling.scale_down_stabilization_seconds)
    desired_before = replicas_from_status(moe, status)
    replicas, histories = {}, {}
    for group in moe.groups:
        deployment = expert_service_name(moe, group)
        current = states[deployment].replicas if deployment in states else desired_before[group.name]
        decision = decide_replicas(current, loads[group.name], history_from_status(moe, status, group), now, policy)
        histories[group.name] = decision.history
        replicas[group.name] = decision.replicas
        if deployment in states and decision.replicas != current:
            memo.children.scale(moe.namespace, deployment, decision.replicas)
            message = f"{deployment}: {current} -> {decision.replicas} replicas " \
                      f"(experts {format_expert_ids(group.experts)}, {loads[group.name]:.1f} tokens/s)"
            logger.info("scaled %s", message)
            kopf.event(body, type="Normal", reason="Scaled", message=message)
    return replicas, loads, histories


@kopf.timer(GROUP, VERSION, PLURAL, interval=TICK_SECONDS)
def refresh_and_autoscale(name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, body: kopf.Body,
                          patch: kopf.Patch, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    """Every autoscaling.intervalSeconds: read load, scale groups, refresh readiness in status."""
    try:
        moe = parse_spec(name, namespace, dict(spec))
    except SpecError:
        return  # reconcile() already reported it
    now = time.monotonic()
    if now - memo.get("last_refresh", float("-inf")) < moe.autoscaling.interval_seconds:
        return
    memo.last_refresh = now
    state = _object_state(memo, status)
    with state.lock:
        states = memo.children.deployment_states(namespace, name)
        conditions = state.conditions
        replicas, loads, histories = replicas_from_status(moe, state.as_status()), None, {}
        if moe.autoscaling.enabled:
            try:
                replicas, loads, histories = _autoscale(moe, state.as_status(), states, memo, body, logger)
                if any(c.get("reason") == "RedisUnreachable" for c in conditions):
                    conditions = set_condition(conditions, "Degraded", False, "AsExpected", "load readable again",
                                               _now_iso())
            except redis.RedisError as exc:
                logger.warning("cannot read load for %s/%s: %s", namespace, name, exc)
                conditions = set_condition(conditions, "Degraded", True, "RedisUnreachable",
                                           f"cannot read load statistics: {exc}", _now_iso())
        readiness = readiness_status(moe, states, conditions, _now_iso())
        state.conditions = readiness["conditions"]
        state.groups = groups_status(moe, replicas, states, loads, histories, state.as_status())
        patch.status.update(readiness)
        patch.status["groups"] = state.groups


@kopf.on.delete(GROUP, VERSION, PLURAL)
def cleanup_redis_keys(name: str, spec: kopf.Spec, namespace: str, body: kopf.Body, memo: kopf.Memo,
                       logger: logging.Logger, **_: Any) -> None:
    """Finalizer: UNLINK the deployment's `eaas:{name}:*` keys; children go by garbage collection."""
    try:
        url = parse_spec(name, namespace, dict(spec)).redis_url
    except SpecError:
        url = ((spec.get("memPool") or {}).get("redis") or {}).get("url")
    client = _redis_for(url, memo)
    if client is None:
        return
    try:
        removed = load.delete_deployment_keys(client, name)
    except redis.RedisError as exc:
        # Keys expire by TTL (docs/redis-schema.md); a dead Redis must not block deletion forever.
        logger.warning("could not delete Redis keys eaas:%s:* (%s); leaving them to expire", name, exc)
        return
    kopf.event(body, type="Normal", reason="RedisKeysDeleted", message=f"unlinked {removed} keys eaas:{name}:*")
