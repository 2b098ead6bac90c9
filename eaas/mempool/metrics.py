"""Prometheus metrics of the MemPool (one set per registry, shared by every pool in the process)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

_BY_REGISTRY: "weakref.WeakKeyDictionary[CollectorRegistry, MempoolMetrics]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class MempoolMetrics:
    hits: Counter            # KV blocks returned by match
    misses: Counter          # full KV blocks asked for by match and not returned
    bytes_written: Counter   # framed KV bytes handed to the store
    bytes_read: Counter      # framed KV bytes received from the store (rejected ones included)
    op_seconds: Histogram    # wall time of each MemPool call, labelled by op
    errors: Counter          # failures, labelled by kind: unavailable, corrupt, foreign, timeout, backlog


def mempool_metrics(registry: CollectorRegistry | None = None) -> MempoolMetrics:
    """The metric set registered in `registry` (default: prometheus_client's global one), created once."""
    registry = REGISTRY if registry is None else registry
    metrics = _BY_REGISTRY.get(registry)
    if metrics is None:
        metrics = MempoolMetrics(
            hits=Counter("eaas_mempool_hits", "KV blocks returned by match", registry=registry),
            misses=Counter("eaas_mempool_misses", "Full KV blocks asked for by match but not returned",
                           registry=registry),
            bytes_written=Counter("eaas_mempool_bytes_written", "Framed KV block bytes written",
                                  registry=registry),
            bytes_read=Counter("eaas_mempool_bytes_read", "Framed KV block bytes read", registry=registry),
            op_seconds=Histogram("eaas_mempool_op_seconds", "Wall time of MemPool operations", ["op"],
                                 registry=registry,
                                 buckets=(.0001, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5)),
            errors=Counter("eaas_mempool_errors", "MemPool failures by kind", ["kind"], registry=registry),
        )
        _BY_REGISTRY[registry] = metrics
    return metrics
