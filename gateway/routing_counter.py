"""Counts token-slots routed to each expert id, cheaply, from the engine thread.

The MoE layers report their top-k ids every step; counting is one bincount into a tensor under a lock.
The event loop drains the totals periodically into Prometheus and the load statistics in Redis.
"""

from __future__ import annotations

import threading

import torch


class RoutingCounter:
    def __init__(self, num_experts: int):
        self.num_experts = num_experts
        self._counts = torch.zeros(num_experts, dtype=torch.long)
        self._lock = threading.Lock()

    def observe(self, layer: int, expert_ids: torch.Tensor) -> None:
        ids = expert_ids.reshape(-1)
        counts = torch.bincount(ids[ids >= 0], minlength=self.num_experts)
        with self._lock:
            self._counts += counts

    def drain(self) -> dict[int, int]:
        with self._lock:
            counts, self._counts = self._counts, torch.zeros_like(self._counts)
        return {i: int(n) for i, n in enumerate(counts.tolist()) if n}
