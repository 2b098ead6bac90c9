"""The KV cache in paged blocks, preallocated once from a byte budget.

Every layer has a K and a V tensor of [num_blocks, block_size, heads, dim]; token position p of a
sequence lives in block table[p // block_size] at offset p % block_size, where `table` is the
sequence's block table (block_manager.py decides which blocks). A packed forward writes all new keys
with one scatter of rows and reads each sequence's context back with one gather of whole blocks per
layer (a block is one contiguous run of memory, so the gather copies few large pieces), padded to the
longest context of the batch (attention.py masks the padding).
MLA layers cache their compressed latents the same way (whatever the attention module hands to
`update`). Token ranges leave and come back as MemPool blocks: [k0, v0, k1, v1, ...], each
[heads, tokens, dim].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eaas.engine.layout import BatchLayout


@dataclass(frozen=True)
class LayerShape:
    """What one layer caches per token: K [k_heads, k_dim], V [v_heads, v_dim], in `dtype`."""
    k_heads: int
    k_dim: int
    v_heads: int
    v_dim: int
    dtype: torch.dtype

    @property
    def bytes_per_token(self) -> int:
        return (self.k_heads * self.k_dim + self.v_heads * self.v_dim) * self.dtype.itemsize


def bytes_per_block(shapes: list[LayerShape], block_size: int) -> int:
    return block_size * sum(s.bytes_per_token for s in shapes)


class KVCache:
    """The preallocated tensors of every layer (zeros: padded reads of never-written rows stay finite)."""

    def __init__(self, shapes: list[LayerShape], num_blocks: int, block_size: int, device="cpu"):
        self.shapes = shapes
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.blocks = [(torch.zeros(num_blocks, block_size, s.k_heads, s.k_dim, dtype=s.dtype, device=device),
                        torch.zeros(num_blocks, block_size, s.v_heads, s.v_dim, dtype=s.dtype, device=device))
                       for s in shapes]
        self.layers = [(k.view(-1, *k.shape[2:]), v.view(-1, *v.shape[2:])) for k, v in self.blocks]  # by row

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in self.blocks)

    def rows(self, table: list[int], lo: int, hi: int) -> torch.Tensor:
        """Cache rows of positions lo..hi-1 of a sequence with block table `table`."""
        pos = torch.arange(lo, hi)
        return torch.tensor(table, dtype=torch.long)[pos // self.block_size] * self.block_size + pos % self.block_size

    def export_tokens(self, table: list[int], lo: int, hi: int) -> list[torch.Tensor]:
        """Copies of positions lo..hi-1, as one MemPool block: [k0, v0, k1, v1, ...] of [heads, hi - lo, dim]."""
        rows = self.rows(table, lo, hi)
        return [t.index_select(0, rows).transpose(0, 1).contiguous() for kv in self.layers for t in kv]

    @torch.inference_mode()
    def import_tokens(self, table: list[int], lo: int, block: list[torch.Tensor]) -> None:
        """Write one MemPool block (as export_tokens gives) at positions lo.. of the sequence."""
        rows = self.rows(table, lo, lo + block[0].shape[1])
        for i, kv in enumerate(self.layers):
            for j, t in enumerate(kv):
                t[rows] = block[2 * i + j].transpose(0, 1).to(t.dtype)


class PagedBatch:
    """Duck-types transformers' Cache.update for one packed forward over several sequences."""

    def __init__(self, cache: KVCache, layout: BatchLayout, tables: list[list[int]], mirror=None,
                 slots: list[int] | None = None):
        """mirror, slots: a KVMirror that staged this batch in `slots` (kv_mirror.py); attention then reads
        it instead of gathering blocks."""
        self.cache = cache
        self.layout = layout
        self.mirror = mirror
        if mirror is not None:
            self.token_slots = torch.tensor(slots, dtype=torch.long).repeat_interleave(torch.tensor(layout.new))
            lo = slots[0]
            self.slot_range = slice(lo, lo + len(slots)) if slots == list(range(lo, lo + len(slots))) else None
            self.batch_slots = torch.tensor(slots, dtype=torch.long)
        bs = cache.block_size
        # plain Python for these few hundred indices: cheaper than a dozen small tensor ops every step
        rows = []
        for table, start, n in zip(tables, layout.cached, layout.new):
            rows.extend(table[p // bs] * bs + p % bs for p in range(start, start + n))
        self.write_rows = torch.tensor(rows, dtype=torch.long)  # [T]
        width = -(-layout.max_context // bs)
        # [B * width]: blocks past a sequence's context read block 0 (zeros or stale), masked in attention
        self.read_blocks = torch.tensor([b for t in tables for b in (t + [0] * width)[:width]],
                                        dtype=torch.long)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs):
        kc, vc = self.cache.layers[layer_idx]
        kc.index_copy_(0, self.write_rows, key_states[0].transpose(0, 1))  # [T, heads, dim]
        vc.index_copy_(0, self.write_rows, value_states[0].transpose(0, 1))
        if self.mirror is not None:
            return self._mirrored(key_states, value_states, layer_idx)
        kb, vb = self.cache.blocks[layer_idx]
        return self._context(kb), self._context(vb)

    def _mirrored(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int):
        """The new rows into the mirror too; [B, heads, max_context, dim] views of it (a copy if the slots
        are not consecutive)."""
        mk, mv = self.mirror.layers[layer_idx]
        pos, n = self.layout.positions, self.layout.max_context
        mk[self.token_slots, :, pos] = key_states[0].transpose(0, 1)
        mv[self.token_slots, :, pos] = value_states[0].transpose(0, 1)
        if self.slot_range is not None:
            return mk[self.slot_range, :, :n], mv[self.slot_range, :, :n]
        return mk[:, :, :n].index_select(0, self.batch_slots), mv[:, :, :n].index_select(0, self.batch_slots)

    def _context(self, blocks: torch.Tensor) -> torch.Tensor:
        """[B, heads, max_context, dim]: every sequence's cached tokens, gathered block by block."""
        B, n = len(self.layout.new), self.layout.max_context
        out = blocks.index_select(0, self.read_blocks)  # [B * width, block_size, heads, dim]
        return out.view(B, -1, blocks.shape[2], blocks.shape[3])[:, :n].transpose(1, 2)


class _ShapeSeen(Exception):
    pass


class _ShapeProbe:
    """A Cache whose update records the K/V shapes a layer produces, then stops the forward."""

    def __init__(self):
        self.shape: LayerShape | None = None

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        self.shape = LayerShape(key_states.shape[1], key_states.shape[-1], value_states.shape[1],
                                value_states.shape[-1], key_states.dtype)
        raise _ShapeSeen


@torch.inference_mode()
def probe_layer_shapes(hf_model) -> list[LayerShape]:
    """Per-token K/V shape of every layer, from one token through each attention module (no experts run)."""
    inner = hf_model.model
    param = next(inner.parameters())
    h = torch.zeros(1, 1, hf_model.config.hidden_size, dtype=param.dtype, device=param.device)
    positions = torch.zeros(1, 1, dtype=torch.long, device=param.device)
    pos_emb = inner.rotary_emb(h, positions)
    layout = BatchLayout([0], [1])
    shapes = []
    for layer in inner.layers:
        probe = _ShapeProbe()
        try:
            layer.self_attn(hidden_states=h, attention_mask=None, position_ids=positions, past_key_values=probe,
                            position_embeddings=pos_emb, eaas_layout=layout)
        except _ShapeSeen:
            pass
        if probe.shape is None:
            raise RuntimeError(f"{type(layer.self_attn).__name__} did not write its KV cache")
        shapes.append(probe.shape)
    return shapes
