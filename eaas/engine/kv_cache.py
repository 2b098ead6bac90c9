"""KV cache in slots: every running sequence owns one slot of per-layer [slots, heads, capacity, dim]
buffers, so a packed forward writes all new keys with one scatter and reads the batch with one gather.

MLA layers cache their compressed latents the same way (whatever the attention module hands to
`update`). A sequence's cache is exportable as fixed-size token blocks (for the MemPool) and
importable back.
"""

from __future__ import annotations

import threading

import torch

from eaas.engine.layout import BatchLayout


class KVSlots:
    """The shared store: lazily shaped per layer on first write, grown by doubling (slots or capacity)."""

    def __init__(self, num_layers: int, initial_slots: int = 8, initial_capacity: int = 64):
        self.num_layers = num_layers
        self.layers: list[list[torch.Tensor] | None] = [None] * num_layers
        self.num_slots = initial_slots
        self.capacity = initial_capacity
        self._free = list(range(initial_slots - 1, -1, -1))
        self._create_lock = threading.Lock()  # micro-batch threads may both reach a layer's first write

    def new_sequence(self) -> "SequenceKV":
        return SequenceKV(self)

    def alloc(self) -> int:
        if not self._free:
            old = self.num_slots
            self._resize(slots=2 * old)
            self._free = list(range(2 * old - 1, old - 1, -1))
        return self._free.pop()

    def release(self, slot: int) -> None:
        self._free.append(slot)

    def reserve(self, tokens: int) -> None:
        """Make room for `tokens` positions per slot. Not thread-safe: call before parallel forwards."""
        if tokens > self.capacity:
            cap = self.capacity
            while cap < tokens:
                cap *= 2
            self._resize(capacity=cap)

    def _resize(self, slots: int | None = None, capacity: int | None = None) -> None:
        slots, capacity = slots or self.num_slots, capacity or self.capacity
        for i, bufs in enumerate(self.layers):
            if bufs is None:
                continue
            grown = []
            for t in bufs:
                new = t.new_zeros(slots, t.shape[1], capacity, t.shape[3])
                new[:t.shape[0], :, :t.shape[2]] = t
                grown.append(new)
            self.layers[i] = grown
        self.num_slots, self.capacity = slots, capacity

    def buffers(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> list[torch.Tensor]:
        """The layer's [K, V] buffers, created on first use with the shapes the module produces."""
        bufs = self.layers[layer]
        if bufs is None:
            with self._create_lock:
                bufs = self.layers[layer]
                if bufs is None:
                    bufs = [k.new_zeros(self.num_slots, k.shape[-3], self.capacity, k.shape[-1]),
                            v.new_zeros(self.num_slots, v.shape[-3], self.capacity, v.shape[-1])]
                    self.layers[layer] = bufs
        return bufs


class SequenceKV:
    """One sequence's view of the store: its slot and how many tokens are cached."""

    def __init__(self, store: KVSlots):
        self.store = store
        self.slot = store.alloc()
        self.length = 0
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.store.release(self.slot)
            self.released = True

    @torch.inference_mode()  # the store's buffers are inference tensors (made during forwards)
    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k [heads, n, dk], v [heads, n, dv] at positions start..start+n-1."""
        self.store.reserve(start + k.shape[1])
        bufs = self.store.buffers(layer, k, v)
        bufs[0][self.slot, :, start:start + k.shape[1]] = k
        bufs[1][self.slot, :, start:start + v.shape[1]] = v

    def export_blocks(self, block_size: int, num_tokens: int | None = None, first_block: int = 0) -> list[list[torch.Tensor]]:
        """Full blocks first_block.. of the first `num_tokens` cached tokens: [k0, v0, k1, v1, ...] clones."""
        n = self.length if num_tokens is None else min(num_tokens, self.length)
        blocks = []
        for b in range(first_block, n // block_size):
            lo, hi = b * block_size, (b + 1) * block_size
            blocks.append([t[self.slot, :, lo:hi].clone() for bufs in self.store.layers for t in bufs])
        return blocks

    def import_blocks(self, blocks: list[list[torch.Tensor]], block_size: int) -> None:
        """Load blocks (as given by export_blocks) as this sequence's first len(blocks)*block_size tokens."""
        for b, block in enumerate(blocks):
            for layer in range(self.store.num_layers):
                self.write(layer, b * block_size, block[2 * layer], block[2 * layer + 1])
        self.length = len(blocks) * block_size

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)


class PackedKVCache:
    """Duck-types transformers' Cache.update for one packed forward over several sequences."""

    def __init__(self, kvs: list[SequenceKV], layout: BatchLayout):
        stores = {id(kv.store) for kv in kvs}
        if len(stores) != 1:
            raise ValueError("all sequences of one forward must share one KVSlots store")
        self.store = kvs[0].store
        self.kvs = kvs
        self.layout = layout
        self.store.reserve(layout.max_context)
        slot_list = [kv.slot for kv in kvs]
        slots = torch.tensor(slot_list, dtype=torch.long)
        self.batch_slots = slots
        # slots lo..lo+B-1 in order (the usual case: the free list hands out the lowest first): attention
        # can read a view of the store instead of gathering a copy every layer
        lo = slot_list[0]
        self.slot_range = slice(lo, lo + len(slot_list)) if slot_list == list(range(lo, lo + len(slot_list))) else None
        self.token_slots = slots.repeat_interleave(torch.tensor(layout.new))  # [T]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        k_new = key_states[0].transpose(0, 1)  # [T, heads, dim]
        v_new = value_states[0].transpose(0, 1)
        kb, vb = self.store.buffers(layer_idx, key_states, value_states)
        pos = self.layout.positions
        kb[self.token_slots, :, pos] = k_new
        vb[self.token_slots, :, pos] = v_new
        n = self.layout.max_context
        if self.slot_range is not None:
            return kb[self.slot_range, :, :n], vb[self.slot_range, :, :n]
        return kb[:, :, :n].index_select(0, self.batch_slots), vb[:, :, :n].index_select(0, self.batch_slots)

    def commit(self) -> None:
        """After the forward: every sequence now caches its new tokens too."""
        for i, kv in enumerate(self.kvs):
            kv.length = self.layout.context[i]
