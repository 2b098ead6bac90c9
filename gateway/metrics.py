"""Prometheus metrics of the gateway (conventional names, `eaas_gateway_` prefix), one set per registry."""

from __future__ import annotations

import weakref

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def _gateway_metric_set(registry: CollectorRegistry) -> dict:
    return {
        "requests": Counter("eaas_gateway_requests_total", "Generation requests finished, by status",
                            ["status"], registry=registry),
        "in_progress": Gauge("eaas_gateway_requests_in_progress", "Requests being generated", registry=registry),
        "ttft": Histogram("eaas_gateway_time_to_first_token_seconds", "Arrival to first token",
                          buckets=_LATENCY_BUCKETS, registry=registry),
        "itl": Histogram("eaas_gateway_inter_token_latency_seconds", "Time between two tokens of a request",
                         buckets=_LATENCY_BUCKETS, registry=registry),
        "tokens": Counter("eaas_gateway_generated_tokens_total", "Tokens generated", registry=registry),
        "waiting": Gauge("eaas_gateway_queue_depth", "Requests waiting to be scheduled", registry=registry),
        "running": Gauge("eaas_gateway_running_sequences", "Sequences in the running batch", registry=registry),
        "reused": Counter("eaas_gateway_prefill_tokens_reused_total",
                          "Prompt tokens whose KV came from the MemPool instead of prefill", registry=registry),
        "kv_used": Gauge("eaas_gateway_kv_blocks_used", "KV cache blocks held by running sequences",
                         registry=registry),
        "kv_free": Gauge("eaas_gateway_kv_blocks_free", "KV cache blocks free (some still hold a cached prefix)",
                         registry=registry),
        "preemptions": Counter("eaas_gateway_preemptions_total",
                               "Running sequences preempted (KV freed, recomputed later) for lack of KV blocks",
                               registry=registry),
        "refused": Counter("eaas_gateway_requests_refused_total",
                           "Requests refused on arrival because the queue was full (HTTP 429, RESOURCE_EXHAUSTED)",
                           registry=registry),
    }


class GatewayMetrics:
    # Names are unique within a registry: one set per registry (the default one in production), keyed weakly
    # by the registry itself as ExpertRpcMetrics does.
    _by_registry: weakref.WeakKeyDictionary[CollectorRegistry, dict] = weakref.WeakKeyDictionary()

    def __init__(self, registry: CollectorRegistry = REGISTRY):
        m = GatewayMetrics._by_registry.get(registry)
        if m is None:
            m = GatewayMetrics._by_registry[registry] = _gateway_metric_set(registry)
        self.requests, self.in_progress = m["requests"], m["in_progress"]
        self.ttft, self.itl, self.tokens_generated = m["ttft"], m["itl"], m["tokens"]
        self.waiting, self.running = m["waiting"], m["running"]
        self.prefill_tokens_reused = m["reused"]
        self.kv_blocks_used, self.kv_blocks_free = m["kv_used"], m["kv_free"]
        # per-expert routing, RPCs and replicas: gateway/expert_rpc_metrics.py (the remote backend's)
        self.preemptions, self.requests_refused = m["preemptions"], m["refused"]

    def requests_started(self) -> None:
        self.in_progress.inc()

    def request_done(self, status: str) -> None:
        self.in_progress.dec()
        self.requests.labels(status).inc()

    def set_queue(self, waiting: int, running: int) -> None:
        self.waiting.set(waiting)
        self.running.set(running)

    def set_kv_blocks(self, used: int, free: int) -> None:
        self.kv_blocks_used.set(used)
        self.kv_blocks_free.set(free)
