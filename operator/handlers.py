"""kopf handlers for MoEDeployment: thin I/O around the pure builders in spec/manifests/decisions/status.

Registered on import; `eaas operator` (cli.py) imports this module and runs kopf. No handler needs a
finalizer: children go by ownerReferences garbage collection, Redis keys by TTL (or at once when this
operator sees the deletion), so deleting a MoEDeployment never waits for an operator (docs/operator.md).
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import kopf
import redis

from . import load
from .cluster import ChildObjects, load_kube_config, prunable_kinds
from .credentials import redis_password, redis_password_secret
from .decisions import group_replicas
from .manifests import desired_manifests, selector_labels
from .network_policies import operator_peer
from .refresh import Refresher, now_iso
from .rollout import plan_layout_change
from .spec import DEFAULT_REDIS_IMAGE, GROUP, PLURAL, VERSION, MoESpec, SpecError, parse_spec, redis_url_of
from .status import groups_status, readiness_status, replicas_from_status, set_condition
from .tracking import ObjectState, Tracked


RESHAPE_POLL_SECONDS = 3


class QuietTracking(logging.Filter):
    """Drops kopf's "Handler 'track' succeeded." (one per watch event: every status write); keeps the rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Handler 'track' succeeded."


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: logging.Logger, **_: Any) -> None:
    # The name older versions put on every object: kopf removes it now that no handler requires it.
    settings.persistence.finalizer = "eaas.dev/cleanup"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="eaas.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="eaas.dev")
    # Events: what we post, plus kopf's own warnings (not every log line).
    settings.posting.level = logging.WARNING
    logging.getLogger("kopf.objects").addFilter(QuietTracking())
    memo.children = ChildObjects(load_kube_config())
    memo.features = memo.children.features()
    memo.redis_clients = {}
    memo.tracked = Tracked()
    memo.stop = threading.Event()
    # The chart tells the operator who it is (for the managed Redis's NetworkPolicy): its namespace and
    # its pod's labels as k=v,k=v. Unset outside a pod.
    memo.own_namespace = os.environ.get("EAAS_OPERATOR_NAMESPACE")
    memo.own_labels = dict(pair.split("=", 1) for pair in os.environ.get("EAAS_OPERATOR_POD_LABELS", "").split(",")
                           if "=" in pair)
    refresher = Refresher(memo.children, memo.tracked,
                          lambda moe: _redis_for(moe.redis_url, memo, moe.namespace, moe.name, moe.redis_managed))
    memo.refresh_thread = threading.Thread(target=refresher.run, args=(memo.stop,), name="refresh", daemon=True)
    memo.refresh_thread.start()
    logger.info("cluster features: %s; redis override: %s", memo.features, memo.get("redis_url_override"))


@kopf.on.cleanup()
def stop_refreshing(memo: kopf.Memo, **_: Any) -> None:
    memo.stop.set()
    memo.refresh_thread.join(timeout=10)


def _redis_for(spec_url: str | None, memo: kopf.Memo, namespace: str, name: str, managed: bool
               ) -> redis.Redis | None:
    """A client for --redis-url if given, else for the CR's own Redis (a managed one with its derived
    password, the one in its Secret); None when there is neither."""
    override = memo.get("redis_url_override")
    url = override or spec_url
    if not url:
        return None
    if url not in memo.redis_clients:
        password = redis_password(memo.password_key, namespace, name) if managed and not override else None
        memo.redis_clients[url] = load.redis_client(url, password=password)
    return memo.redis_clients[url]


def _ensure_redis_password(moe: MoESpec, body: kopf.Body, memo: kopf.Memo) -> None:
    """The managed Redis's password Secret, created the first time only: every later reconcile keeps it."""
    secret = redis_password_secret(moe, redis_password(memo.password_key, moe.namespace, moe.name))
    kopf.adopt(secret, owner=body)
    memo.children.create_once(secret)


def _invalid_spec(body: kopf.Body, state: ObjectState, patch: kopf.Patch, exc: SpecError) -> None:
    with state.lock:
        state.conditions = set_condition(state.conditions, "Degraded", True, "InvalidSpec", str(exc), now_iso())
        patch.status["conditions"] = state.conditions
    kopf.warn(body, reason="InvalidSpec", message=str(exc))


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(name: str, namespace: str, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
              body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
    """Apply every child the spec asks for, delete the ones it no longer does, report in status."""
    state = memo.tracked.state(namespace, name, dict(status))
    try:
        moe = parse_spec(name, namespace, dict(spec), memo.get("default_redis_image") or DEFAULT_REDIS_IMAGE)
    except SpecError as exc:
        _invalid_spec(body, state, patch, exc)
        return
    with state.lock:
        desired = group_replicas(moe, replicas_from_status(moe, state.as_status()) if moe.autoscaling.enabled else {})
        manifests = desired_manifests(moe, desired, memo.features,
                                      operator_peer(memo.get("own_namespace"), memo.get("own_labels"), namespace))
        kopf.adopt(manifests, owner=body)
        try:
            if moe.redis_managed:
                _ensure_redis_password(moe, body, memo)
            for manifest in manifests:
                memo.children.apply(manifest)
            states = memo.children.deployment_states(namespace, name)
            draining = memo.children.terminating_pods(namespace, selector_labels(moe, "gateway"))
            change = plan_layout_change(moe, states, draining)
            removed = memo.children.prune(meta["uid"], namespace, name, manifests, prunable_kinds(memo.features),
                                          keep_names=change.keep)
        except Exception as exc:  # ApiException, connection errors: report, then let kopf retry
            state.conditions = set_condition(state.conditions, "Degraded", True, "ApplyFailed", str(exc)[:500],
                                             now_iso())
            patch.status["conditions"] = state.conditions
            raise kopf.TemporaryError(f"applying children failed: {exc}", delay=10) from exc
        conditions = set_condition(state.conditions, "Degraded", False, "AsExpected", "all children applied",
                                   now_iso())
        state.reshaping = change.waiting
        readiness = readiness_status(moe, states, conditions, now_iso(), state.reshaping)
        state.conditions = readiness["conditions"]
        state.groups = groups_status(moe, desired, states, None, {}, state.as_status())
        patch.status.update(readiness)
        patch.status["groups"] = state.groups
        patch.status["observedGeneration"] = meta.get("generation")
        # None removes the field: kube-apiserver 1.20 rejects "" in a status merge patch as "null"
        patch.status["redisUrl"] = moe.redis_url
    if change.waiting:  # kopf calls reconcile again; the old groups go once the gateways have moved
        raise kopf.TemporaryError(change.waiting, delay=RESHAPE_POLL_SECONDS)
    message = f"applied {len(manifests)} objects: {len(moe.groups)} expert groups of " \
              f"{moe.experts_per_replica} experts, {moe.gateway_replicas} gateways"
    if removed:
        message += f"; removed {', '.join(removed)}"
    kopf.event(body, type="Normal", reason="Reconciled", message=message)


@kopf.on.event(GROUP, VERSION, PLURAL)
def track(event: kopf.RawEvent, body: kopf.Body, name: str, namespace: str, spec: kopf.Spec, memo: kopf.Memo,
          logger: logging.Logger, **_: Any) -> None:
    """Keep the refresh loop's list current; on deletion, UNLINK the deployment's Redis keys (best effort)."""
    if event["type"] != "DELETED":
        memo.tracked.track(dict(event["object"]))
        return
    memo.tracked.forget(namespace, name)
    managed = bool((dict(spec).get("memPool") or {}).get("managed"))
    client = _redis_for(redis_url_of(name, namespace, dict(spec)), memo, namespace, name, managed)
    if client is None:
        return
    try:
        removed = load.delete_deployment_keys(client, name)
    except redis.RedisError as exc:
        # Keys expire by TTL (docs/redis-schema.md); a dead Redis costs nothing but memory for a while.
        logger.warning("could not delete Redis keys eaas:%s:* (%s); leaving them to expire", name, exc)
        return
    logger.info("unlinked %d Redis keys eaas:%s:*", removed, name)
