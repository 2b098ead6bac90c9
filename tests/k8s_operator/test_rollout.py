"""When a re-shaped layout replaces the old one (operator/rollout.py): pure decisions, no cluster."""

from __future__ import annotations

from eaas.operator.features import ClusterFeatures
from eaas.operator.manifests import desired_manifests
from eaas.operator.rollout import gateways_moved, plan_layout_change
from eaas.operator.spec import parse_spec
from eaas.operator.status import DeploymentState as S


def moe(experts_per_replica: int):
    return parse_spec("mix", "team", {"model": {"uri": "/m", "numExperts": 8, "numLayers": 2}, "image": "i",
                                      "experts": {"expertsPerReplica": experts_per_replica}})


OLD = {"mix-experts-e0-3": S(2, 2, 2, 2), "mix-experts-e4-7": S(2, 2, 2, 2)}
NEW_READY = {"mix-experts-e0-1": S(1, 1, 1, 1), "mix-experts-e2-3": S(1, 1, 1, 1),
             "mix-experts-e4-5": S(1, 1, 1, 1), "mix-experts-e6-7": S(1, 1, 1, 1)}
MOVED = S(replicas=2, ready=2, updated=2, pods=2)


def test_two_layouts_never_share_a_name_or_a_selector():
    def selectors(epr):
        return {(m["metadata"]["name"], tuple(sorted(m["spec"]["selector"]["matchLabels"].items())))
                for m in desired_manifests(moe(epr), {}, ClusterFeatures()) if m["kind"] == "Deployment"
                and "experts" in m["metadata"]["name"]}
    four, two = selectors(4), selectors(2)
    assert not {n for n, _ in four} & {n for n, _ in two}
    assert not {s for _, s in four} & {s for _, s in two}


def test_old_groups_stay_until_new_groups_are_ready_and_gateways_moved():
    new = moe(2)
    # the new groups were just created: nothing ready yet
    pending = {**OLD, **{n: S(1, 0, 1, 1) for n in NEW_READY}, "mix-gateway": S(2, 2, 1, 3)}
    change = plan_layout_change(new, pending, draining_gateways=0)
    assert change.keep == ("mix-experts-e0-3", "mix-experts-e4-7")
    assert "new expert groups not ready: mix-experts-e0-1" in change.waiting
    # new groups ready, a new gateway pod surged but an old one still serves
    surging = {**OLD, **NEW_READY, "mix-gateway": S(replicas=2, ready=2, updated=1, pods=3)}
    assert "gateways still moving" in plan_layout_change(new, surging, 0).waiting
    # every gateway pod is new and ready, but an old one is still draining its streams
    assert plan_layout_change(new, {**OLD, **NEW_READY, "mix-gateway": MOVED}, draining_gateways=1).keep
    # all moved and drained: the old groups go
    done = plan_layout_change(new, {**OLD, **NEW_READY, "mix-gateway": MOVED}, draining_gateways=0)
    assert done.keep == () and done.waiting is None


def test_no_layout_change_keeps_nothing():
    same = plan_layout_change(moe(4), {**OLD, "mix-gateway": S(1, 0, 0, 1)}, 0)
    assert same.keep == () and same.waiting is None


def test_gateways_moved_needs_the_controller_to_have_seen_the_new_template():
    assert gateways_moved(MOVED, 0)
    assert not gateways_moved(S(2, 2, 2, 2, observed=False), 0)
    assert not gateways_moved(None, 0)
