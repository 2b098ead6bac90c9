"""Prometheus pieces both ends of the expert RPC use: a per-expert token counter cheap enough for the data
path, and the latency buckets of one RPC or one combine.

Per-expert counts are accumulated into a tensor with one `bincount` per batch and turned into samples
only when /metrics is scraped: one `Counter.labels(expert).inc()` per expert per layer call would cost
more than the RPC it measures.
"""

from __future__ import annotations

import threading

import torch
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily

SECONDS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class PerExpertTokenCounter:
    """A Prometheus collector: `<name>_total{expert="i"}` = token-expert pairs routed to expert i so far."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry | None = REGISTRY):
        self.name = name
        self.documentation = documentation
        self._counts = torch.zeros(0, dtype=torch.int64)  # grows to the largest expert id seen
        self._lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def add(self, expert_ids: torch.Tensor) -> None:
        """Count expert_ids (any shape, integers >= -1; -1 = no expert): callers have rejected anything else."""
        counts = torch.bincount(expert_ids.reshape(-1).cpu() + 1)[1:]  # bin 0 holds the -1s; two ops, not six
        if counts.numel() == 0:
            return
        # outside inference mode: a tally grown inside it would be an inference tensor, which a later call
        # from outside inference mode could not add to (the engine calls in it, tools and tests may not)
        with self._lock, torch.inference_mode(False):
            if counts.numel() > self._counts.numel():
                grown = torch.zeros(counts.numel(), dtype=torch.int64)
                grown[: self._counts.numel()] = self._counts
                self._counts = grown
            self._counts[: counts.numel()] += counts

    def counts(self) -> list[int]:
        with self._lock:
            return self._counts.tolist()

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=["expert"])]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=["expert"])
        for expert, count in enumerate(self.counts()):
            if count:
                family.add_metric([str(expert)], count)
        yield family
