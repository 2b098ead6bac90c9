"""Pure decisions of the expert data path: who owns an expert, how a batch splits into requests, which
replica gets a request, which servers are refused, and what a failure means.

No I/O, no clocks and no locks here, so each rule is unit-tested on its own (tests/data_path/test_dispatch.py).
"""

from __future__ import annotations

import enum
import statistics
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import torch

from eaas.protos import expert_pb2
from eaas.topology import format_expert_ids

NO_GROUP, NO_EXPERT = -2, -1  # owner-table entries for unknown expert ids and for slot id -1


def owner_table(groups: Sequence[Iterable[int]]) -> torch.Tensor:
    """Group index of each expert id, read by `owners`; raises ValueError if an expert is in two groups."""
    groups = [tuple(g) for g in groups]
    top = max((e for g in groups for e in g), default=-1)
    table = torch.full((top + 4,), NO_GROUP, dtype=torch.long)
    table[1] = NO_EXPERT
    for gi, expert_ids in enumerate(groups):
        slots = [e + 2 for e in expert_ids]
        overlap = [e - 2 for e in slots if table[e] != NO_GROUP]
        if overlap:
            raise ValueError(f"experts {format_expert_ids(overlap)} are in more than one group")
        table[slots] = gi
    return table


def owners(table: torch.Tensor, expert_ids: torch.Tensor) -> torch.Tensor:
    """Per slot of expert_ids [T, k]: its group index, NO_EXPERT for -1, NO_GROUP for ids no group holds."""
    return table[expert_ids.clamp(-2, table.numel() - 3).long() + 2]


@dataclass(frozen=True)
class GroupRows:
    """The rows of a batch that route to one group, with other groups' slots masked to -1."""

    group: int
    rows: torch.Tensor        # [n] row indices into the batch
    expert_ids: torch.Tensor  # [n, k]


def split_by_group(owner: torch.Tensor, expert_ids: torch.Tensor) -> list[GroupRows]:
    """One GroupRows per group that any slot routes to, in ascending group order (the order outputs add up)."""
    split = []
    for gi in torch.unique(owner).tolist():
        if gi >= 0:
            in_group = owner == gi
            rows = in_group.any(dim=1).nonzero().squeeze(1)
            split.append(GroupRows(gi, rows, torch.where(in_group, expert_ids, -1).index_select(0, rows)))
    return split


def rows_per_request(max_message_bytes: int, row_bytes: int, overhead_bytes: int = 4096) -> int:
    """How many rows of `row_bytes` fit in one request under a server's message limit (at least one)."""
    return max(1, (max_message_bytes - overhead_bytes) // max(1, row_bytes))


def refusal(info: expert_pb2.ServerInfo, *, fingerprint: str, group_experts: Iterable[int],
            layers: Collection[int] | None, group_dtype: str | None) -> tuple[str, str] | None:
    """(reason, detail) if a server must never serve this group, else None.

    `group_dtype`: the dtype the group's admitted replicas compute in (None before the first one).
    """
    if info.model_fingerprint != fingerprint:
        return ("fingerprint_mismatch", f"server model fingerprint {info.model_fingerprint} differs from the "
                                        f"gateway's {fingerprint}: not the same checkpoint")
    missing = set(group_experts) - set(info.expert_ids)
    if missing:
        return "config_mismatch", f"server does not hold experts {format_expert_ids(missing)} of its group"
    if layers is not None and not set(layers) <= set(info.layers):
        return "config_mismatch", f"server lacks MoE layers {sorted(set(layers) - set(info.layers))}"
    if group_dtype is not None and group_dtype != info.dtype:
        return "config_mismatch", f"server computes in {info.dtype}, its group in {group_dtype}"
    return None


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


def pick_with_fallback(states: Sequence[str], admitted_once: Sequence[bool], outstanding: Sequence[int],
                       cursor: int, tried: Collection[int]) -> int | None:
    """The replica for the next attempt: least-outstanding "ready" one not yet tried; failing that, a
    "quarantined" one that was admitted before (one transient error may have quarantined a healthy server:
    try it before giving up); else None."""
    index = pick_replica(outstanding, cursor, set(tried) | {i for i, s in enumerate(states) if s != "ready"})
    if index is None:
        index = pick_replica(outstanding, cursor, set(tried) | {
            i for i, s in enumerate(states) if s != "quarantined" or not admitted_once[i]})
    return index


HEDGE_FACTOR = 4.0      # an attempt slower than this many times its group's median round trip is hedged
HEDGE_FLOOR_S = 0.02    # ... but never sooner than this (a quiet machine's layer takes ~1-3 ms)
HEDGE_HISTORY = 8       # round trips needed before the median means anything


def hedge_delay(recent_seconds: Sequence[float], factor: float = HEDGE_FACTOR,
                floor_s: float = HEDGE_FLOOR_S) -> float | None:
    """How long an attempt may run before the same request also goes to another replica, or None (never).

    Why: a SIGKILLed server's socket closes only when the kernel has torn the whole process down (measured
    185-323 ms for a 381 MiB expert server under load), and a stalled one answers not at all until the
    deadline; servers are stateless, so a second replica's answer is as good and the first one to come wins.
    """
    if factor <= 0 or len(recent_seconds) < HEDGE_HISTORY:
        return None
    return max(floor_s, factor * statistics.median(recent_seconds))


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
