"""Prometheus metrics of the gateway's expert RPCs: round trips, failures, token-expert pairs routed, replicas."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Histogram

from eaas.gateway.replica_metrics import ReplicaStateCollector
from eaas.rpc.metrics import SECONDS_BUCKETS, PerExpertTokenCounter


class ExpertRpcMetrics:
    # One set per registry (names are unique within one; several backends may share a process). Keyed by the
    # registry itself, weakly: an id() key outlives its registry and a new registry can reuse the id.
    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, ExpertRpcMetrics] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry):
        self.rpc_seconds = Histogram("eaas_gateway_expert_rpc_seconds", "Round trip of one Combine RPC attempt.",
                                     buckets=SECONDS_BUCKETS, registry=registry)
        self.failures = Counter("eaas_gateway_expert_rpc_failures", "Failed Combine attempts and refused replicas.",
                                ["reason"], registry=registry)
        self.tokens_routed = PerExpertTokenCounter("eaas_gateway_tokens_routed",
                                                   "Token-expert pairs sent to expert servers, by expert id.", registry)
        self.replicas = ReplicaStateCollector(registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> ExpertRpcMetrics:
        metrics = cls._by_registry.get(registry)
        if metrics is None:
            metrics = cls._by_registry[registry] = cls(registry)
        return metrics
