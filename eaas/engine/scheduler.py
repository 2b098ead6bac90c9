"""Which sequences run in the next forward, and how many tokens each brings (a pure decision).

Running sequences decode one token each; waiting ones are admitted in arrival order while the
sequence and token budgets allow. A prompt longer than the token budget is prefilled in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ScheduleLimits:
    max_num_seqs: int = 64
    max_batched_tokens: int = 2048


@dataclass(frozen=True)
class Scheduled:
    index: int   # position in the candidate list (running first, then waiting)
    tokens: int  # how many of its uncached tokens go into this forward


def schedule(running_uncached: list[int], waiting_uncached: list[int], limits: ScheduleLimits) -> tuple[list[Scheduled], int]:
    """Return (scheduled, number of waiting sequences admitted).

    running_uncached[i]: tokens running sequence i still has to feed (1 while decoding, more while
    its prompt is being prefilled in chunks); waiting_uncached[j]: the same for waiting sequence j.
    """
    budget = limits.max_batched_tokens
    out: list[Scheduled] = []
    for i, n in enumerate(running_uncached):
        if len(out) >= limits.max_num_seqs or budget <= 0:
            break
        take = min(n, budget)
        out.append(Scheduled(i, take))
        budget -= take
    admitted = 0
    base = len(running_uncached)
    for j, n in enumerate(waiting_uncached):
        if len(out) >= limits.max_num_seqs or budget <= 0:
            break
        take = min(n, budget)
        out.append(Scheduled(base + j, take))
        budget -= take
        admitted += 1
    return out, admitted
