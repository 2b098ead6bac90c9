"""Prometheus metrics of the gateway's expert RPCs: round trips, failures, token-expert pairs routed."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from eaas.rpc.metrics import SECONDS_BUCKETS, PerExpertTokenCounter


class ExpertRpcMetrics:
    _by_registry: dict[int, ExpertRpcMetrics] = {}

    def __init__(self, registry: CollectorRegistry):
        self.rpc_seconds = Histogram("eaas_gateway_expert_rpc_seconds", "Round trip of one Combine RPC attempt.",
                                     buckets=SECONDS_BUCKETS, registry=registry)
        self.failures = Counter("eaas_gateway_expert_rpc_failures", "Failed Combine attempts and refused replicas.",
                                ["reason"], registry=registry)
        self.tokens_routed = PerExpertTokenCounter("eaas_gateway_tokens_routed",
                                                   "Token-expert pairs sent to expert servers, by expert id.", registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ExpertRpcMetrics:
        if id(registry) not in cls._by_registry:  # one set per registry: several backends may live in a process
            cls._by_registry[id(registry)] = cls(registry)
        return cls._by_registry[id(registry)]
