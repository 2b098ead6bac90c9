"""The expert backend interface: the one seam between the dense side and the experts.

The dense model calls `backend.combine(layer, hidden, expert_ids, weights)` at every MoE layer; the
local backend computes in-process (monolithic mode), the remote backend (eaas.gateway) sends the
tokens to expert servers. Same engine, same routing code: only this object changes.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from eaas.model.experts import ExpertWeights


class ExpertBackend(Protocol):
    def combine(self, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """hidden [T, D], expert_ids [T, k], weights [T, k] -> weighted expert output [T, D]."""
        ...


class LocalExpertBackend:
    """All experts in this process (the monolithic mode)."""

    def __init__(self, weights: ExpertWeights):
        self.weights = weights

    def combine(self, layer, hidden, expert_ids, weights):
        return self.weights.combine(layer, hidden, expert_ids, weights)


class RoutedExperts(nn.Module):
    """Stands in for transformers' `layer.mlp.experts`: same call signature, forwards to a backend."""

    def __init__(self, layer_idx: int, backend: ExpertBackend):
        super().__init__()
        self.layer_idx = layer_idx
        self.backend = backend

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        return self.backend.combine(self.layer_idx, hidden_states, top_k_index, top_k_weights)
