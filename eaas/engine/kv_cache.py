"""Per-sequence KV cache, packed into one forward, exportable as fixed-size token blocks.

Each sequence owns, per layer, a (key, value) pair of growable buffers [heads, capacity, dim]
(MLA layers cache their compressed latents the same way). A forward over many sequences writes
each one's new tokens into its own buffers and hands attention a padded [B, heads, max_ctx, dim] view.
"""

from __future__ import annotations

import torch

from eaas.engine.layout import BatchLayout


class SequenceKV:
    """One sequence's cached keys/values for every layer."""

    def __init__(self, num_layers: int):
        self.layers: list[list[torch.Tensor] | None] = [None] * num_layers
        self.length = 0  # tokens whose K/V are stored (same in every layer after a full forward)

    def _ensure(self, layer: int, k: torch.Tensor, v: torch.Tensor, needed: int) -> list[torch.Tensor]:
        bufs = self.layers[layer]
        if bufs is None or bufs[0].shape[1] < needed:
            cap = max(16, needed, 2 * (bufs[0].shape[1] if bufs is not None else 0))
            new = [k.new_empty(k.shape[0], cap, k.shape[-1]), v.new_empty(v.shape[0], cap, v.shape[-1])]
            if bufs is not None:  # keep everything written so far (imports write before length moves)
                old = bufs[0].shape[1]
                new[0][:, :old] = bufs[0]
                new[1][:, :old] = bufs[1]
            self.layers[layer] = bufs = new
        return bufs

    def write(self, layer: int, start: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """k [heads, n, dk], v [heads, n, dv] at positions start..start+n-1."""
        n = k.shape[1]
        bufs = self._ensure(layer, k, v, start + n)
        bufs[0][:, start:start + n] = k
        bufs[1][:, start:start + n] = v

    def export_blocks(self, block_size: int, num_tokens: int | None = None) -> list[list[torch.Tensor]]:
        """Full blocks of the first `num_tokens` cached tokens: block i = [k0, v0, k1, v1, ...] clones."""
        n = self.length if num_tokens is None else min(num_tokens, self.length)
        blocks = []
        for b in range(n // block_size):
            lo, hi = b * block_size, (b + 1) * block_size
            blocks.append([t[:, lo:hi].clone() for bufs in self.layers for t in bufs])
        return blocks

    def import_blocks(self, blocks: list[list[torch.Tensor]], block_size: int) -> None:
        """Load blocks (as given by export_blocks) as this sequence's first len(blocks)*block_size tokens."""
        for b, block in enumerate(blocks):
            for layer in range(len(self.layers)):
                self.write(layer, b * block_size, block[2 * layer], block[2 * layer + 1])
        self.length = len(blocks) * block_size

    def truncate(self, length: int) -> None:
        self.length = min(self.length, length)


class PackedKVCache:
    """Duck-types transformers' Cache.update for one packed forward over several sequences."""

    def __init__(self, kvs: list[SequenceKV], layout: BatchLayout):
        self.kvs = kvs
        self.layout = layout

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        lay = self.layout
        k_all, v_all = key_states[0], value_states[0]  # [heads, T, dim]
        for i, kv in enumerate(self.kvs):
            lo, hi = lay.token_offsets[i], lay.token_offsets[i + 1]
            kv.write(layer_idx, lay.cached[i], k_all[:, lo:hi], v_all[:, lo:hi])
        B, max_k = len(self.kvs), lay.max_context
        k_pad = key_states.new_zeros(B, k_all.shape[0], max_k, k_all.shape[-1])
        v_pad = value_states.new_zeros(B, v_all.shape[0], max_k, v_all.shape[-1])
        for i, kv in enumerate(self.kvs):
            n = lay.context[i]
            bufs = kv.layers[layer_idx]
            k_pad[i, :, :n] = bufs[0][:, :n]
            v_pad[i, :, :n] = bufs[1][:, :n]
        return k_pad, v_pad

    def commit(self) -> None:
        """After the forward: every sequence now caches its new tokens too."""
        for i, kv in enumerate(self.kvs):
            kv.length = self.layout.context[i]
