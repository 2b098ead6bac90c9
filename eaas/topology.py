"""Expert-group topology: which expert ids each group (one Deployment of replicas) hosts.

Shared contract between the operator (which creates one Deployment per group), the gateway
(which routes a token's experts to the group holding them) and `eaas up`.
A group hosts the same expert ids in every MoE layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ExpertGroup:
    index: int
    experts: tuple[int, ...]

    @property
    def name(self) -> str:
        return f"g{self.index}"


def expert_groups(num_experts: int, experts_per_group: int) -> list[ExpertGroup]:
    """Split expert ids 0..num_experts-1 into ceil(num_experts / experts_per_group) contiguous groups."""
    if num_experts < 1:
        raise ValueError(f"num_experts must be >= 1, got {num_experts}")
    if experts_per_group < 1:
        raise ValueError(f"experts_per_group must be >= 1, got {experts_per_group}")
    count = math.ceil(num_experts / experts_per_group)
    return [
        ExpertGroup(i, tuple(range(i * experts_per_group, min(num_experts, (i + 1) * experts_per_group))))
        for i in range(count)
    ]


def parse_expert_ids(text: str) -> list[int]:
    """Parse '0,1,4-7' into [0, 1, 4, 5, 6, 7] (sorted, unique)."""
    ids: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            lo_i, hi_i = int(lo), int(hi)
            if hi_i < lo_i:
                raise ValueError(f"bad expert range {part!r}")
            ids.update(range(lo_i, hi_i + 1))
        else:
            ids.add(int(part))
    if not ids:
        raise ValueError(f"no expert ids in {text!r}")
    if min(ids) < 0:
        raise ValueError(f"expert ids must be >= 0 in {text!r}")
    return sorted(ids)


def format_expert_ids(ids: list[int] | tuple[int, ...]) -> str:
    """Inverse of parse_expert_ids, compact: [0,1,2,5] -> '0-2,5'."""
    ids = sorted(set(ids))
    parts: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if prev != start else f"{start}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if prev != start else f"{start}")
    return ",".join(parts)
