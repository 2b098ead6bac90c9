"""A dense working copy of the running sequences' KV, so that attention reads a view instead of a gather.

The paged blocks (kv_cache.py) stay the engine's memory: the budget, prefix sharing, preemption and
MemPool exports all go through them. Gathering every sequence's blocks into a padded batch each layer,
each step, cost decode a fifth of its speed at 64 sequences x 256 tokens (benchmarks/decode_old_vs_new.py),
so the running sequences also live here, per layer K and V of [slots, heads, capacity, dim]: a sequence
takes a slot when it starts running and has its cached rows copied in once; every forward writes its new
rows into both places; attention reads slots lo..lo+B-1 as a view (the usual step: slots are handed out
lowest first, in batch order), or one index_select of the batch's slots otherwise.
Size: slots and capacity double on demand, up to max_num_seqs and the model's context, and never past
max_bytes (the engine passes the block pool's own size, so KV memory stays within twice --kv-cache-bytes);
a batch that would need more is not staged (stage returns None) and attention gathers its blocks instead.
"""

from __future__ import annotations

import heapq

import torch

from eaas.engine.kv_cache import KVCache, LayerShape


class KVMirror:
    def __init__(self, shapes: list[LayerShape], max_slots: int, max_positions: int, device="cpu",
                 max_bytes: int | None = None):
        self.shapes = shapes
        self.max_bytes = max_bytes
        self.bytes_per_row = sum(s.k_heads * s.k_dim * s.dtype.itemsize + s.v_heads * s.v_dim * s.dtype.itemsize
                                 for s in shapes)  # one token in one slot, all layers
        self.max_slots = max_slots
        self.max_positions = max_positions
        self.device = device
        self.num_slots = 0
        self.capacity = 0
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.slot_of: dict[int, int] = {}    # seq_id -> slot
        self.staged: dict[int, int] = {}     # seq_id -> leading tokens present in its slot
        self._free: list[int] = []           # heap: the lowest free slot first

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.layers)

    def forget(self, seq_id: int) -> None:
        """The sequence stopped running (finished, aborted, preempted): its slot is free."""
        slot = self.slot_of.pop(seq_id, None)
        if slot is not None:
            del self.staged[seq_id]
            heapq.heappush(self._free, slot)

    @torch.inference_mode()
    def stage(self, kv: KVCache, seq_ids: list[int], tables: list[list[int]], cached: list[int],
              new: list[int]) -> list[int] | None:
        """Slots of a batch about to run, with every cached row in place. Call on the engine's thread,
        before the forward (micro-batches then write disjoint slots); it may grow the tensors.
        None: the batch would take the mirror past max_bytes; nothing changed, gather its blocks instead."""
        slots_needed = len(self.slot_of) + sum(1 for s in seq_ids if s not in self.slot_of)
        tokens = max(c + n for c, n in zip(cached, new))
        if self.max_bytes is not None and self._sized(slots_needed, tokens) * self.bytes_per_row > self.max_bytes:
            return None
        self._grow(slots_needed, tokens)
        slots = []
        for seq_id, table, c, n in zip(seq_ids, tables, cached, new):
            if seq_id not in self.slot_of:
                self.slot_of[seq_id] = heapq.heappop(self._free)
                self.staged[seq_id] = 0
            slot = self.slot_of[seq_id]
            if self.staged[seq_id] < c:  # a prefix it did not compute here: shared, imported, or recomputed
                self._copy_in(kv, slot, table, self.staged[seq_id], c)
            self.staged[seq_id] = c + n  # the forward writes the rest
            slots.append(slot)
        return slots

    def _copy_in(self, kv: KVCache, slot: int, table: list[int], lo: int, hi: int) -> None:
        rows = kv.rows(table, lo, hi)
        for (kc, vc), (mk, mv) in zip(kv.layers, self.layers):
            mk[slot, :, lo:hi] = kc.index_select(0, rows).transpose(0, 1)
            mv[slot, :, lo:hi] = vc.index_select(0, rows).transpose(0, 1)

    def _sized(self, slots: int, tokens: int) -> int:
        """Slot-rows (slots x capacity) the tensors would have after growing to hold slots x tokens."""
        if slots <= self.num_slots and tokens <= self.capacity:
            return self.num_slots * self.capacity
        new_slots, cap = self._grown_shape(slots, tokens)
        return new_slots * cap

    def _grown_shape(self, slots: int, tokens: int) -> tuple[int, int]:
        new_slots, cap = max(self.num_slots, 1), max(self.capacity, 64)
        while new_slots < slots:
            new_slots *= 2
        while cap < tokens:
            cap *= 2
        return min(new_slots, self.max_slots), min(cap, max(self.max_positions, tokens))

    def _grow(self, slots: int, tokens: int) -> None:
        if slots <= self.num_slots and tokens <= self.capacity:
            return
        new_slots, cap = self._grown_shape(slots, tokens)
        if self.layers:
            grown = []
            for k, v in self.layers:
                nk, nv = k.new_zeros(new_slots, k.shape[1], cap, k.shape[3]), v.new_zeros(new_slots, v.shape[1], cap, v.shape[3])
                nk[:self.num_slots, :, :self.capacity] = k
                nv[:self.num_slots, :, :self.capacity] = v
                grown.append((nk, nv))
            self.layers = grown
        else:  # zeros: padded reads of never-written rows stay finite
            self.layers = [(torch.zeros(new_slots, s.k_heads, cap, s.k_dim, dtype=s.dtype, device=self.device),
                            torch.zeros(new_slots, s.v_heads, cap, s.v_dim, dtype=s.dtype, device=self.device))
                           for s in self.shapes]
        for slot in range(self.num_slots, new_slots):
            heapq.heappush(self._free, slot)
        self.num_slots, self.capacity = new_slots, cap
