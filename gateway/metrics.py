"""Prometheus metrics of the gateway (conventional names, `eaas_gateway_` prefix), one set per process."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayMetrics:
    _shared: dict | None = None

    def __init__(self):
        if GatewayMetrics._shared is None:  # prometheus names are per process: create them once
            GatewayMetrics._shared = {
                "requests": Counter("eaas_gateway_requests_total", "Generation requests finished, by status",
                                    ["status"]),
                "in_progress": Gauge("eaas_gateway_requests_in_progress", "Requests being generated"),
                "ttft": Histogram("eaas_gateway_time_to_first_token_seconds", "Arrival to first token",
                                  buckets=_LATENCY_BUCKETS),
                "itl": Histogram("eaas_gateway_inter_token_latency_seconds", "Time between two tokens of a request",
                                 buckets=_LATENCY_BUCKETS),
                "tokens": Counter("eaas_gateway_generated_tokens_total", "Tokens generated"),
                "waiting": Gauge("eaas_gateway_queue_depth", "Requests waiting to be scheduled"),
                "running": Gauge("eaas_gateway_running_sequences", "Sequences in the running batch"),
                "reused": Counter("eaas_gateway_prefill_tokens_reused_total",
                                  "Prompt tokens whose KV came from the MemPool instead of prefill"),
                "kv_used": Gauge("eaas_gateway_kv_blocks_used", "KV cache blocks held by running sequences"),
                "kv_free": Gauge("eaas_gateway_kv_blocks_free", "KV cache blocks free (some still hold a cached prefix)"),
                "preemptions": Counter("eaas_gateway_preemptions_total",
                                       "Running sequences preempted (KV freed, recomputed later) for lack of KV blocks"),
                "refused": Counter("eaas_gateway_requests_refused_total",
                                   "Requests refused on arrival because the queue was full (HTTP 429, RESOURCE_EXHAUSTED)"),
                "stalled": Counter("eaas_gateway_stalled_streams_total",
                                   "Streams aborted (KV freed) because the client read none of their output for "
                                   "--stall-timeout seconds", ["api"]),
            }
        m = GatewayMetrics._shared
        self.requests, self.in_progress = m["requests"], m["in_progress"]
        self.ttft, self.itl, self.tokens_generated = m["ttft"], m["itl"], m["tokens"]
        self.waiting, self.running = m["waiting"], m["running"]
        self.prefill_tokens_reused = m["reused"]
        self.kv_blocks_used, self.kv_blocks_free = m["kv_used"], m["kv_free"]
        self.preemptions, self.requests_refused = m["preemptions"], m["refused"]
        self.stalled_streams = m["stalled"]  # per-expert routing: eaas_gateway_tokens_routed_total (remote backend)

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
