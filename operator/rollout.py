"""When a re-shaped layout (a new expertsPerReplica) may replace the old one: a pure decision.

The new layout's groups have new names (their expert ranges), so both layouts run side by side: the
operator creates the new groups and rolls the gateways (their topology changed); a new gateway pod turns
Ready only once every expert has a ready replica in the new layout, and old gateway pods keep serving
with the old layout until they have drained. Only then are the old groups deleted: no request ever
meets a layout that is gone.
"""

from __future__ import annotations

from dataclasses import dataclass

from .manifests import expert_service_name
from .spec import MoESpec
from .status import DeploymentState


@dataclass(frozen=True)
class LayoutChange:
    keep: tuple[str, ...]  # retired groups' object names to keep for now
    waiting: str | None  # why they are kept; None when nothing is left to wait for


def retired_groups(spec: MoESpec, states: dict[str, DeploymentState]) -> list[str]:
    """Expert-group Deployments that exist but belong to no group of the current layout."""
    current = {expert_service_name(spec, g) for g in spec.groups}
    return sorted(n for n in states if n.startswith(f"{spec.name}-experts-") and n not in current)


def gateways_moved(gateway: DeploymentState | None, draining: int) -> bool:
    """Every gateway pod runs the current template and is ready; none of an older one is left or draining."""
    return (gateway is not None and gateway.observed and gateway.updated >= gateway.replicas
            and gateway.ready >= gateway.replicas and (gateway.pods or 0) <= gateway.replicas and draining == 0)


def plan_layout_change(spec: MoESpec, states: dict[str, DeploymentState], draining_gateways: int) -> LayoutChange:
    retired = retired_groups(spec, states)
    if not retired:
        return LayoutChange((), None)
    unready = [expert_service_name(spec, g) for g in spec.groups
               if expert_service_name(spec, g) not in states or states[expert_service_name(spec, g)].ready < 1]
    if unready:
        reason = f"new expert groups not ready: {', '.join(unready)}"
    elif not gateways_moved(states.get(f"{spec.name}-gateway"), draining_gateways):
        reason = "gateways still moving to the new expert groups"
    else:
        return LayoutChange((), None)
    return LayoutChange(tuple(retired), f"{reason}; keeping {', '.join(retired)} until then")
