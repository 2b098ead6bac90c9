"""Pure builders of the MoEDeployment's `.status`: conditions, per-group replicas, load and history."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from eaas.topology import ExpertGroup, format_expert_ids

from .autoscale import Recommendation
from .manifests import expert_service_name
from .spec import MoESpec


@dataclass(frozen=True)
class DeploymentState:
    """What the cluster reports for one child Deployment."""
    replicas: int  # spec.replicas
    ready: int
    updated: int  # pods of the current template
    pods: int | None = None  # status.replicas: pods of every template, terminating ones excluded
    observed: bool = True  # the controller has seen the current spec (observedGeneration >= generation)


def set_condition(conditions: list[dict[str, Any]], type_: str, status: bool, reason: str, message: str,
                  now_iso: str) -> list[dict[str, Any]]:
    """Conditions with `type_` replaced; lastTransitionTime only moves when the status flips."""
    text = "True" if status else "False"
    previous = next((c for c in conditions if c.get("type") == type_), None)
    since = previous["lastTransitionTime"] if previous and previous.get("status") == text \
        and previous.get("lastTransitionTime") else now_iso
    updated = {"type": type_, "status": text, "reason": reason, "message": message, "lastTransitionTime": since}
    return [c for c in conditions if c.get("type") != type_] + [updated]


def _status_entry(status: dict[str, Any], group: ExpertGroup) -> dict[str, Any] | None:
    """The group's status entry, if it still describes the same experts (groups re-shape on spec changes)."""
    for entry in status.get("groups") or []:
        if entry.get("name") == group.name and entry.get("experts") == format_expert_ids(group.experts):
            return entry
    return None


def replicas_from_status(spec: MoESpec, status: dict[str, Any]) -> dict[str, int]:
    """Replicas the autoscaler last chose per group; re-shaped or new groups start at minReplicas."""
    replicas = {}
    for group in spec.groups:
        entry = _status_entry(status, group)
        replicas[group.name] = int(entry["desiredReplicas"]) if entry and "desiredReplicas" in entry \
            else spec.min_replicas
    return replicas


def history_from_status(spec: MoESpec, status: dict[str, Any], group: ExpertGroup) -> tuple[Recommendation, ...]:
    entry = _status_entry(status, group) or {}
    return tuple(Recommendation(float(h["time"]), int(h["replicas"])) for h in entry.get("history") or [])


def groups_status(spec: MoESpec, desired: dict[str, int], states: dict[str, DeploymentState],
                  loads: dict[str, float] | None, histories: dict[str, tuple[Recommendation, ...]],
                  previous: dict[str, Any]) -> list[dict[str, Any]]:
    """One entry per group; load and history carry over from `previous` where this pass has none."""
    entries = []
    for group in spec.groups:
        state = states.get(expert_service_name(spec, group))
        old = _status_entry(previous, group) or {}
        entry: dict[str, Any] = {
            "name": group.name,
            "experts": format_expert_ids(group.experts),
            "desiredReplicas": desired[group.name],
            "readyReplicas": state.ready if state else 0,
        }
        if loads is not None and group.name in loads:
            entry["tokensPerSecond"] = round(loads[group.name], 3)
        elif "tokensPerSecond" in old:
            entry["tokensPerSecond"] = old["tokensPerSecond"]
        history = histories.get(group.name)
        if history is None:
            history = history_from_status(spec, previous, group)
        if history:
            entry["history"] = [{"time": round(h.time, 3), "replicas": h.replicas} for h in history]
        entries.append(entry)
    return entries


def readiness_status(spec: MoESpec, states: dict[str, DeploymentState], conditions: list[dict[str, Any]],
                     now_iso: str, reshaping: str | None = None) -> dict[str, Any]:
    """Printer-column summaries plus the Ready and Progressing conditions; `reshaping`: why the old
    layout's groups are still kept (operator/rollout.py), which is what Progressing then says."""
    group_names = [expert_service_name(spec, g) for g in spec.groups]
    ready_groups = sum(1 for n in group_names if n in states and states[n].ready >= 1)
    gateway = states.get(f"{spec.name}-gateway", DeploymentState(spec.gateway_replicas, 0, 0))
    all_ready = ready_groups == len(group_names) and gateway.ready >= 1
    rolling = [n for n, s in sorted(states.items()) if s.updated < s.replicas or s.ready < s.replicas]
    conditions = set_condition(
        conditions, "Ready", all_ready, "AllGroupsServing" if all_ready else "ReplicasNotReady",
        f"{ready_groups}/{len(group_names)} expert groups and {gateway.ready}/{gateway.replicas} gateways ready",
        now_iso)
    if reshaping:
        conditions = set_condition(conditions, "Progressing", True, "ReshapingGroups", reshaping, now_iso)
    else:
        conditions = set_condition(
            conditions, "Progressing", bool(rolling), "RollingOut" if rolling else "Stable",
            f"waiting for: {', '.join(rolling)}" if rolling else "every Deployment is up to date", now_iso)
    return {
        "readyExpertGroups": f"{ready_groups}/{len(group_names)}",
        "gateways": f"{gateway.ready}/{gateway.replicas}",
        "conditions": conditions,
    }
