"""Pure decisions of the expert data path: which replica gets a request, and what a failure means.

No I/O and no clocks here, so the policy is unit-tested on its own (tests/data_path/test_dispatch.py).
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Sequence


def pick_replica(outstanding: Sequence[int], cursor: int, excluded: Collection[int] = ()) -> int | None:
    """Index of the replica with the fewest outstanding requests, or None if all are excluded.

    Ties go to the first tied replica at or after `cursor` (cyclically), so a caller that advances the
    cursor after every pick spreads equal load round-robin instead of always hitting replica 0.
    """
    n = len(outstanding)
    best: int | None = None
    for step in range(n):
        i = (cursor + step) % n
        if i in excluded:
            continue
        if best is None or outstanding[i] < outstanding[best]:
            best = i
    return best


class FailureAction(enum.Enum):
    RETRY_ELSEWHERE = "retry_elsewhere"                  # replica is alive but busy: another one, no quarantine
    QUARANTINE_AND_RETRY = "quarantine_and_retry"        # replica looks dead or broken: probe it in background
    FAIL = "fail"                                        # the request itself is wrong: every replica would say so


_RETRY_ONLY = {"RESOURCE_EXHAUSTED"}
_FATAL = {"INVALID_ARGUMENT", "OUT_OF_RANGE", "PERMISSION_DENIED", "UNAUTHENTICATED", "ALREADY_EXISTS"}


def failure_action(code_name: str) -> FailureAction:
    """What to do after a Combine attempt failed with the gRPC status `code_name` (e.g. "UNAVAILABLE")."""
    if code_name in _RETRY_ONLY:
        return FailureAction.RETRY_ELSEWHERE
    if code_name in _FATAL:
        return FailureAction.FAIL
    # UNAVAILABLE, DEADLINE_EXCEEDED, CANCELLED, UNKNOWN, INTERNAL, UNIMPLEMENTED, DATA_LOSS, ...
    return FailureAction.QUARANTINE_AND_RETRY
