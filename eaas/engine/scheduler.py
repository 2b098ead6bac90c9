"""Which sequences run in the next forward, how many tokens each brings, and who gives its KV back
(a pure decision over token counts and free KV blocks).

Running sequences go first, oldest first: each decodes one token (or feeds the next chunk of its
prompt) and grows by the blocks that needs. When the free blocks run out, the newest running sequence
is preempted (its blocks are freed; it recomputes later) until the older one fits. Waiting sequences
are then admitted in arrival order while the sequence, token and block budgets allow, and not at all
in a step that preempted (the preempted go back to the head of the queue). A prompt longer than the
token budget is prefilled in chunks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eaas.engine.block_manager import blocks_for


@dataclass(frozen=True)
class ScheduleLimits:
    max_num_seqs: int = 64
    max_batched_tokens: int = 2048


@dataclass(frozen=True)
class Demand:
    """One sequence as the scheduler sees it."""
    cached: int         # tokens whose KV it has (a waiting one: what it will have on admission)
    uncached: int       # tokens still to feed through the model
    held: int = 0       # blocks it holds (a waiting one: cached blocks that others hold and it will share)
    exclusive: int = 0  # blocks that go back to the free list if it is preempted


@dataclass(frozen=True)
class Scheduled:
    index: int   # position in the candidate list (running first, then waiting)
    tokens: int  # how many of its uncached tokens go into this forward


@dataclass(frozen=True)
class Plan:
    scheduled: list[Scheduled] = field(default_factory=list)
    admitted: int = 0                                     # the first `admitted` waiting sequences start running
    preempted: list[int] = field(default_factory=list)   # running indices, newest first


def _new_blocks(d: Demand, take: int, block_size: int) -> int:
    return max(0, blocks_for(d.cached + take, block_size) - d.held)


def schedule(running: list[Demand], waiting: list[Demand], free_blocks: int, block_size: int,
             limits: ScheduleLimits) -> Plan:
    budget = limits.max_batched_tokens
    free = free_blocks
    out: list[Scheduled] = []
    preempted: list[int] = []
    last = len(running)  # running[last:] are preempted
    i = 0
    while i < last and len(out) < limits.max_num_seqs and budget > 0:
        d = running[i]
        take = min(d.uncached, budget)
        while _new_blocks(d, take, block_size) > free and last - 1 > i:
            last -= 1  # preempt the newest running sequence
            preempted.append(last)
            free += running[last].exclusive
        room = (d.held + free) * block_size - d.cached  # tokens it can feed with what is free now
        if room < take and d.uncached > 1 and room > 0:
            take = room  # a prompt chunk shrinks to what fits
        if _new_blocks(d, take, block_size) > free:
            last -= 1  # nothing newer left to preempt: this one waits for blocks (it is the newest left)
            preempted.append(i)
            free += d.exclusive
            break
        free -= _new_blocks(d, take, block_size)
        out.append(Scheduled(i, take))
        budget -= take
        i += 1
    admitted = 0
    if not preempted:
        base = len(running)
        for j, d in enumerate(waiting):
            if len(out) >= limits.max_num_seqs or budget <= 0:
                break
            take = min(d.uncached, budget)
            need = _new_blocks(d, take, block_size)
            if need > free:
                break  # first come, first served: nobody overtakes the head of the queue
            free -= need
            out.append(Scheduled(base + j, take))
            budget -= take
            admitted += 1
    return Plan(out, admitted, preempted)
