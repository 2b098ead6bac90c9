"""Packed attention: many sequences of different lengths in one forward, plugged into transformers.

transformers' attention modules project, rotate and cache as usual, then call the registered attention
function with q [1, H, T, d] (all sequences' new tokens packed) and the padded K/V that PagedBatch
gathered from the KV blocks (kv_cache.py).
Here q is scattered into a [B, H, max_new, d] grid, attended with one SDPA call under a per-sequence
causal mask, and gathered back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ATTENTION_NAME = "eaas_packed"
_registered = False


def packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                     sliding_window=None, eaas_layout=None, **kwargs):
    lay = eaas_layout
    if lay is None:
        raise RuntimeError("eaas packed attention called without a batch layout")
    _, H, T, d = query.shape
    B = len(lay.new)
    q = torch.cat([query[0].transpose(0, 1), query.new_zeros(1, H, d)])  # [T + 1, H, d]; last row = padding
    q = q[lay.pad_index].view(B, lay.max_new, H, d).transpose(1, 2)     # [B, H, max_new, d]
    out = F.scaled_dot_product_attention(q, key, value, attn_mask=lay.mask(sliding_window), scale=scaling,
                                         enable_gqa=key.shape[1] != H)
    out = out.transpose(1, 2).reshape(B * lay.max_new, H, out.shape[-1])[lay.valid_index]  # [T, H, dv]
    return out.unsqueeze(0), None


def register_packed_attention() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTENTION_NAME, packed_attention)
        _registered = True
