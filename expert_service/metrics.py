"""Prometheus metrics of an expert server, and a per-expert token counter cheap enough for the data path.

Per-expert counts are accumulated into a tensor with one `bincount` per batch and turned into samples
only when /metrics is scraped: one `Counter.labels(expert).inc()` per expert per layer call would cost
more than the RPC it measures.
"""

from __future__ import annotations

import threading

import torch
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
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
        ids = expert_ids.reshape(-1).long().cpu()
        ids = ids[ids >= 0]  # -1 = no expert
        if ids.numel() == 0:
            return
        counts = torch.bincount(ids)
        with self._lock:
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


class ExpertServerMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY):
        self.tokens = PerExpertTokenCounter("eaas_expert_tokens", "Token-expert pairs computed, by expert id.",
                                            registry)
        self.batch_tokens = Histogram("eaas_expert_batch_tokens", "Tokens per combine batch (after micro-batching).",
                                      buckets=TOKEN_BUCKETS, registry=registry)
        self.combine_seconds = Histogram("eaas_expert_combine_seconds", "Compute time of one combine batch.",
                                         buckets=SECONDS_BUCKETS, registry=registry)
        self.inflight = Gauge("eaas_expert_inflight_requests", "Combine requests admitted and not yet answered.",
                              registry=registry)
        self.requests = Counter("eaas_expert_requests", "Combine requests answered, by gRPC status code.",
                                ["code"], registry=registry)

    def observe_batch(self, tokens: int, expert_ids: torch.Tensor, seconds: float) -> None:
        self.tokens.add(expert_ids)
        self.batch_tokens.observe(tokens)
        self.combine_seconds.observe(seconds)
