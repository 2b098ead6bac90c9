"""KV blocks of the fixed budget: who holds which block, and which full blocks hold which token prefix.

nano-vllm's block manager: a sequence owns a block table (block ids, in token order); blocks are
ref-counted so that sequences with the same prefix share them; a full block is named by the chain hash
of every token up to its end, and keeps that name after it is freed until the block is handed out
again, so a later request (or a preempted one coming back) finds its prefix still cached.
Pure bookkeeping: no tensors here (kv_cache.py holds the numbers).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict


def blocks_for(tokens: int, block_size: int) -> int:
    """Blocks needed to hold `tokens` positions."""
    return -(-tokens // block_size)


def chain_hashes(token_ids: list[int], block_size: int, start: bytes = b"") -> list[bytes]:
    """Name of every full block of token_ids: a hash of the previous block's name and this block's tokens."""
    names, h = [], start
    for b in range(len(token_ids) // block_size):
        chunk = token_ids[b * block_size:(b + 1) * block_size]
        h = hashlib.blake2b(h + b"".join(t.to_bytes(4, "little") for t in chunk), digest_size=16).digest()
        names.append(h)
    return names


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int):
        if num_blocks < 1 or block_size < 1:
            raise ValueError(f"need at least one block of at least one token, got {num_blocks} x {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.refs = [0] * num_blocks
        self.name_of: list[bytes | None] = [None] * num_blocks
        self.by_name: dict[bytes, int] = {}
        # ref-0 blocks, oldest-freed first (cached prefixes live longest); ordered dict: O(1) take from the middle
        self.free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))

    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    # --- prefix lookup ----------------------------------------------------------------------------
    def cached_prefix(self, names: list[bytes]) -> list[int]:
        """Block ids holding the longest run of `names` (a sequence's full-block names), without taking them."""
        out = []
        for name in names:
            bid = self.by_name.get(name)
            if bid is None:
                break
            out.append(bid)
        return out

    def shared_hits(self, names: list[bytes]) -> int:
        """How many of the cached prefix's blocks are held by someone (taking them costs no free block)."""
        return sum(1 for bid in self.cached_prefix(names) if self.refs[bid] > 0)

    # --- taking and giving back -------------------------------------------------------------------
    def take_cached(self, names: list[bytes]) -> list[int]:
        """Take (ref +1) every block of the cached prefix of `names`; returns their ids."""
        table = self.cached_prefix(names)
        for bid in table:
            if self.refs[bid] == 0:
                del self.free[bid]
            self.refs[bid] += 1
        return table

    def grow(self, table: list[int], tokens: int) -> None:
        """Append fresh blocks to `table` until it holds `tokens` positions."""
        need = blocks_for(tokens, self.block_size) - len(table)
        if need > len(self.free):
            raise RuntimeError(f"KV budget exhausted: need {need} blocks, {len(self.free)} free")
        for _ in range(need):
            bid, _ = self.free.popitem(last=False)
            if self.name_of[bid] is not None:  # its old content is overwritten: forget the name
                del self.by_name[self.name_of[bid]]
                self.name_of[bid] = None
            self.refs[bid] = 1
            table.append(bid)

    def name(self, bid: int, name: bytes) -> None:
        """Block `bid` is full and holds the prefix called `name`: later requests may share it."""
        if self.name_of[bid] is None and name not in self.by_name:
            self.name_of[bid] = name
            self.by_name[name] = bid

    def release(self, table: list[int]) -> None:
        """Give back a table's blocks; the last ones go first to the free list, so prefix heads stay cached longest."""
        for bid in reversed(table):
            self.refs[bid] -= 1
            if self.refs[bid] == 0:
                self.free[bid] = None
        table.clear()

    def exclusive(self, table: list[int]) -> int:
        """Blocks of `table` nobody else holds: what releasing it frees."""
        return sum(1 for bid in table if self.refs[bid] == 1)
