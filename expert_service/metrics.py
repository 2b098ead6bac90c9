"""Prometheus metrics of an expert server (per-expert counts: eaas/rpc/metrics.py)."""

from __future__ import annotations

import torch
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from eaas.rpc.metrics import SECONDS_BUCKETS, PerExpertTokenCounter

TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)


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
