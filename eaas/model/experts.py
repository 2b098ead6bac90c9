"""Routed-expert weights and the weighted combine: the math an expert server (or local backend) runs.

For each token t and each of its top-k slots j whose expert e is held here:
    out[t] += w[t, j] * down_e( act(gate_e(x[t])) * up_e(x[t]) )
Slots whose expert is not held here (or is -1) contribute nothing, so a gateway can send one request per
server with the other servers' slots masked, and add the partial results.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from eaas.errors import UserError
from eaas.model.checkpoint import Checkpoint
from eaas.model.families import num_routed_experts


# Padded bmm, or each expert's own rows (see _use_padded_grid). Measured on a 2-core CPU over 8-128 experts,
# hidden 128-512, 8-512 tokens, uniform and skewed routing (benchmarks/expert_ffn_paths.py): the padded grid
# wins while it is at most ~2x the real rows, plus the cost of one more per-expert call, worth
# PER_EXPERT / (D * F) rows: grouped_mm's C++ loop costs less per expert than a Python loop of matmuls.
_grouped_mm = getattr(torch.nn.functional, "grouped_mm", None)  # torch >= 2.10
_PADDING_ALLOWED = {"grouped": 2.0, "loop": 2.5}
_PER_EXPERT = {"grouped": 7e4, "loop": 2e5}


@dataclass
class LayerExperts:
    """The experts of one MoE layer held by this process, fused as transformers 5 fuses them in memory."""

    expert_ids: list[int]
    gate_up: torch.Tensor  # [n, D, 2F], gate half first; stored input-major so x @ W needs no transpose
    down: torch.Tensor     # [n, F, D]
    slot_of: torch.Tensor  # [num_experts + 1] -> index into gate_up/down, -1 if not held (last entry: id -1)


class ExpertWeights:
    """Weights of a set of experts across a set of MoE layers, and the combine over them."""

    def __init__(self, layers: dict[int, LayerExperts], num_experts: int, hidden_size: int, act: str, dtype: torch.dtype):
        from transformers.activations import ACT2FN

        self.layers = layers
        self.num_experts = num_experts
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.act_fn = ACT2FN[act]

    @torch.inference_mode()
    def combine(self, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """hidden [T, D], expert_ids [T, k] (int, -1 = none), weights [T, k] -> [T, D] weighted sum."""
        lx = self.layers.get(layer)
        if lx is None:
            raise KeyError(f"layer {layer} is not held here")
        out = torch.zeros_like(hidden)
        k = expert_ids.shape[1] if expert_ids.dim() == 2 else 1
        slots = lx.slot_of[expert_ids.long().clamp(min=-1)].reshape(-1)  # id -1 -> last entry -> -1
        picked = (slots >= 0).nonzero().squeeze(1)
        if picked.numel() == 0:
            return out
        # group the (token, slot) pairs by expert: one sort instead of one search per expert
        slot_sorted, order = torch.sort(slots[picked], stable=True)
        picked = picked[order]
        tokens = picked // k
        x = hidden[tokens]
        counts = torch.bincount(slot_sorted, minlength=len(lx.expert_ids))
        count_list = counts.tolist()  # the one device sync: the rule and both paths use it
        unpadded = "grouped" if _grouped_mm is not None and x.device.type == "cpu" else "loop"
        if _use_padded_grid(count_list, lx.down.shape[1] * lx.down.shape[2], unpadded):
            y = self._ffn_padded(lx, x, slot_sorted, counts, max(count_list))
        elif unpadded == "grouped":
            y = self._ffn_grouped(lx, x, counts)
        else:
            y = self._ffn_loop(lx, x, count_list)
        y = y * weights.reshape(-1)[picked, None]
        out.index_add_(0, tokens, y.to(out.dtype))
        return out

    def _ffn_padded(self, lx: LayerExperts, x, slot_sorted, counts, max_count: int) -> torch.Tensor:
        """Balanced batches: every held expert in one bmm over a [experts, max_count, D] padded grid."""
        starts = torch.cumsum(counts, 0) - counts
        within = torch.arange(x.shape[0]) - starts[slot_sorted]
        grid = x.new_zeros(len(lx.expert_ids), max_count, x.shape[1])
        grid[slot_sorted, within] = x
        gate, up = torch.bmm(grid, lx.gate_up).chunk(2, dim=-1)
        y = torch.bmm(self.act_fn(gate) * up, lx.down)
        return y[slot_sorted, within]

    def _ffn_grouped(self, lx: LayerExperts, x, counts: torch.Tensor) -> torch.Tensor:
        """Skewed or sparse batches on CPU: each expert's contiguous rows, no padding, one grouped_mm per
        matrix (the per-expert loop runs in C++). CPU only: its CUDA kernels have dtype and architecture
        limits that no GPU here could check."""
        offs = torch.cumsum(counts, 0).to(torch.int32)
        gate, up = _grouped_mm(x, lx.gate_up, offs=offs).chunk(2, dim=-1)
        return _grouped_mm(self.act_fn(gate) * up, lx.down, offs=offs)

    def _ffn_loop(self, lx: LayerExperts, x, counts: list[int]) -> torch.Tensor:
        """Skewed or sparse batches elsewhere: one matmul per hit expert over its contiguous rows."""
        parts, lo = [], 0
        for slot, n in enumerate(counts):
            if n:
                gate, up = (x[lo:lo + n] @ lx.gate_up[slot]).chunk(2, dim=-1)
                parts.append((self.act_fn(gate) * up) @ lx.down[slot])
                lo += n
        return torch.cat(parts)


def _use_padded_grid(counts: list[int], ffn_weights: int, unpadded: str = "grouped") -> bool:
    """One bmm over a [held, max count, D] grid (every held expert, padded) beats the unpadded path
    ("grouped" or "loop": one call per hit expert) when the padding costs less than the per-expert calls.
    ffn_weights = F * D of one expert's down matrix."""
    pairs, hit = sum(counts), sum(1 for n in counts if n)
    allowed = _PADDING_ALLOWED[unpadded] * pairs + hit * _PER_EXPERT[unpadded] / ffn_weights
    return len(counts) * max(counts) <= allowed


def load_expert_weights(ckpt: Checkpoint, expert_ids: list[int] | None = None, layers: list[int] | None = None,
                        dtype: torch.dtype = torch.float32) -> ExpertWeights:
    """Read only the given experts (default: all) of the given MoE layers (default: all) from `ckpt`."""
    num_experts = num_routed_experts(ckpt.config)
    moe_layers = ckpt.moe_layers()
    if not moe_layers:
        raise UserError(f"{ckpt.path}: no routed-expert tensors found for {ckpt.family.model_type}")
    expert_ids = sorted(set(range(num_experts) if expert_ids is None else expert_ids))
    bad = [e for e in expert_ids if not 0 <= e < num_experts]
    if bad:
        raise UserError(f"expert id {bad[0]} out of range: the model has experts 0..{num_experts - 1}")
    layers = moe_layers if layers is None else sorted(set(layers))
    bad_layers = [layer for layer in layers if layer not in moe_layers]
    if bad_layers:
        raise UserError(f"layer {bad_layers[0]} has no routed experts; MoE layers: {moe_layers}")
    fam = ckpt.family
    keys = [fam.expert_key(layer, e, p) for layer in layers for e in expert_ids for p in ("gate", "up", "down")]
    tensors = ckpt.read(keys, dtype=dtype, desc="loading experts")
    out: dict[int, LayerExperts] = {}
    for layer in layers:
        gate_up, down = [], []
        for e in expert_ids:
            g, u, d = (tensors.pop(fam.expert_key(layer, e, p)) for p in ("gate", "up", "down"))
            if g.shape != u.shape or d.shape != (g.shape[1], g.shape[0]):
                raise UserError(f"shape mismatch in layer {layer} expert {e}: gate {tuple(g.shape)}, "
                                f"up {tuple(u.shape)}, down {tuple(d.shape)}")
            if g.shape[1] != ckpt.config.hidden_size:
                raise UserError(f"shape mismatch in layer {layer} expert {e}: gate {tuple(g.shape)} "
                                f"does not match hidden_size {ckpt.config.hidden_size}")
            gate_up.append(torch.cat([g, u], dim=0).t().contiguous())
            down.append(d.t().contiguous())
        slot_of = torch.full((num_experts + 1,), -1, dtype=torch.long)
        slot_of[torch.tensor(expert_ids)] = torch.arange(len(expert_ids))
        out[layer] = LayerExperts(expert_ids, torch.stack(gate_up), torch.stack(down), slot_of)
    return ExpertWeights(out, num_experts, ckpt.config.hidden_size, ckpt.config.hidden_act, dtype)
