"""The pure decisions of the expert data path: owners, splitting, refusals, replica choice, failure policy."""

from __future__ import annotations

import pytest
import torch

from eaas.gateway.dispatch import (HEDGE_FLOOR_S, NO_EXPERT, NO_GROUP, FailureAction, failure_action, hedge_delay,
                                   owner_table, owners, pick_replica, pick_with_fallback, refusal, rows_per_request, split_by_group)
from eaas.protos import expert_pb2


def test_least_outstanding_replica_wins():
    assert pick_replica([3, 1, 2], cursor=0) == 1
    assert pick_replica([0, 5, 5], cursor=2) == 0


def test_ties_rotate_with_the_cursor():
    loads = [1, 1, 1]
    assert [pick_replica(loads, cursor) for cursor in range(4)] == [0, 1, 2, 0]


def test_ties_never_beat_a_less_loaded_replica():
    assert pick_replica([2, 2, 1, 2], cursor=3) == 2


def test_excluded_replicas_are_skipped():
    assert pick_replica([0, 4, 9], cursor=0, excluded={0}) == 1
    assert pick_replica([0, 4, 9], cursor=0, excluded={0, 1}) == 2


def test_no_replica_left_gives_none():
    assert pick_replica([1, 2], cursor=0, excluded={0, 1}) is None
    assert pick_replica([], cursor=0) is None


def test_picks_that_add_load_spread_requests_evenly_and_follow_finished_work():
    """The caller's loop: pick, count the request as outstanding, advance the cursor past the pick."""
    outstanding, cursor, picks = [0, 0, 0], 0, []
    for _ in range(9):
        i = pick_replica(outstanding, cursor)
        outstanding[i] += 1
        cursor = i + 1
        picks.append(i)
    assert picks == [0, 1, 2] * 3
    outstanding[1] -= 2  # replica 1 answered two requests: the next two go there
    for _ in range(2):
        i = pick_replica(outstanding, cursor)
        outstanding[i] += 1
        cursor = i + 1
        assert i == 1


@pytest.mark.parametrize("code, action", [
    ("UNAVAILABLE", FailureAction.QUARANTINE_AND_RETRY),
    ("DEADLINE_EXCEEDED", FailureAction.QUARANTINE_AND_RETRY),
    ("INTERNAL", FailureAction.QUARANTINE_AND_RETRY),
    ("UNIMPLEMENTED", FailureAction.QUARANTINE_AND_RETRY),
    ("RESOURCE_EXHAUSTED", FailureAction.RETRY_ELSEWHERE),
    ("INVALID_ARGUMENT", FailureAction.FAIL),
])
def test_failure_action_by_status(code, action):
    assert failure_action(code) is action


def test_owner_table_maps_each_expert_to_its_group_and_the_rest_to_markers():
    table = owner_table([(0, 1), (4, 5)])
    ids = torch.tensor([[0, 5], [1, -1], [4, 9], [2, -7]])
    assert owners(table, ids).tolist() == [[0, 1], [0, NO_EXPERT], [1, NO_GROUP], [NO_GROUP, NO_GROUP]]


def test_owner_table_refuses_an_expert_in_two_groups():
    with pytest.raises(ValueError, match="experts 2-3 are in more than one group"):
        owner_table([(0, 1, 2, 3), (2, 3, 4)])


def test_split_by_group_gives_each_group_its_rows_with_other_slots_masked():
    ids = torch.tensor([[0, 4], [5, -1], [1, 0], [-1, -1]])
    parts = split_by_group(owners(owner_table([(0, 1), (4, 5)]), ids), ids)
    assert [(p.group, p.rows.tolist(), p.expert_ids.tolist()) for p in parts] == [
        (0, [0, 2], [[0, -1], [1, 0]]),
        (1, [0, 1], [[-1, 4], [5, -1]]),
    ]


def test_rows_per_request_fits_the_limit_and_is_never_zero():
    assert rows_per_request(4096 + 10 * 272, 272) == 10
    assert rows_per_request(100, 272) == 1


def _info(**fields) -> expert_pb2.ServerInfo:
    base = dict(model_fingerprint="fp", expert_ids=[0, 1, 2, 3], layers=[0, 1], dtype="float32")
    return expert_pb2.ServerInfo(**(base | fields))


@pytest.mark.parametrize("info, group_dtype, reason, detail", [
    (_info(), None, None, None),
    (_info(), "float32", None, None),
    (_info(model_fingerprint="other"), None, "fingerprint_mismatch", "not the same checkpoint"),
    (_info(expert_ids=[0, 1]), None, "config_mismatch", "does not hold experts 2-3 of its group"),
    (_info(layers=[0]), None, "config_mismatch", "lacks MoE layers [1]"),
    (_info(dtype="bfloat16"), "float32", "config_mismatch", "computes in bfloat16, its group in float32"),
])
def test_refusal_rules(info, group_dtype, reason, detail):
    verdict = refusal(info, fingerprint="fp", group_experts=(0, 1, 2, 3), layers={0, 1}, group_dtype=group_dtype)
    if reason is None:
        assert verdict is None
    else:
        assert verdict[0] == reason and detail in verdict[1]


def test_fallback_prefers_ready_then_quarantined_replicas_admitted_before():
    states = ["quarantined", "ready", "refused", "quarantined"]
    admitted = [True, True, False, False]
    assert pick_with_fallback(states, admitted, [0, 5, 0, 0], cursor=0, tried=set()) == 1  # ready, even if busier
    assert pick_with_fallback(states, admitted, [0, 5, 0, 0], cursor=0, tried={1}) == 0    # last resort
    assert pick_with_fallback(states, admitted, [0, 5, 0, 0], cursor=0, tried={0, 1}) is None  # never refused/unseen


def test_hedge_delay_is_a_multiple_of_the_median_round_trip_with_a_floor():
    assert hedge_delay([0.01] * 7) is None  # too little history to know what slow means
    assert hedge_delay([0.01] * 8 + [5.0], factor=4) == pytest.approx(0.04)  # one straggler moves no median
    assert hedge_delay([0.001] * 8, factor=4) == HEDGE_FLOOR_S
    assert hedge_delay([0.01] * 8, factor=0) is None  # hedging off
