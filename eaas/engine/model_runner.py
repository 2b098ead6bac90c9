"""Runs one packed forward of the dense model over a scheduled batch and returns last-token logits."""

from __future__ import annotations

import torch

from eaas.engine.kv_cache import KVCache, PagedBatch
from eaas.engine.layout import BatchLayout
from eaas.model.dense import DenseModel


class ModelRunner:
    def __init__(self, model: DenseModel, kv: KVCache):
        self.model = model
        self.kv = kv
        inner = model.hf.model
        self.embed = inner.embed_tokens
        self.layers = inner.layers
        self.norm = inner.norm
        self.rotary = inner.rotary_emb
        self.lm_head = model.hf.lm_head

    @torch.inference_mode()
    def forward(self, input_ids: list[int], tables: list[list[int]], cached: list[int], new_counts: list[int],
                all_logits: bool = False, rows: torch.Tensor | None = None) -> torch.Tensor:
        """Feed each sequence's new tokens (packed in order) after its `cached` ones; tables[i] (sequence i's
        block table) already holds blocks for all of them.

        Returns logits [B, V] of each sequence's last new token (or [T, V] of every token if all_logits, or of
        the packed token indices `rows`).
        """
        layout = BatchLayout(cached, new_counts)
        cache = PagedBatch(self.kv, layout, tables)
        ids = torch.tensor(input_ids, dtype=torch.long).unsqueeze(0)
        positions = layout.positions.unsqueeze(0)
        h = self.embed(ids)
        pos_emb = self.rotary(h, positions)
        for layer in self.layers:
            h = layer(h, attention_mask=None, position_ids=positions, past_key_values=cache,
                      position_embeddings=pos_emb, eaas_layout=layout)
            if isinstance(h, tuple):
                h = h[0]
        h = h[0] if all_logits else h[0, layout.last_index if rows is None else rows]
        return self.lm_head(self.norm(h)).float()
