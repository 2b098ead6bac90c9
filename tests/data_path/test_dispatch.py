"""Replica choice and failure policy of the expert data path (pure functions, no servers)."""

from __future__ import annotations

import pytest

from eaas.gateway.dispatch import FailureAction, failure_action, pick_replica


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


def test_pick_is_deterministic_for_equal_inputs():
    assert {pick_replica([2, 0, 0, 1], cursor=1) for _ in range(10)} == {1}


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
