"""MemPool: KV-cache blocks, expert registry and load statistics (Redis or in-process).

Every part is created with `from_url(url)`: a redis:// or rediss:// URL for the shared Redis backend
(production), or None for the in-process backend (`eaas up` without --redis). See docs/mempool.md.

The names below load on first use (PEP 562): the operator imports `eaas.mempool.keys` and must not pay
for torch, which the KV codec needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_HOME = {
    "RejectedBlock": "codec", "chain_hashes": "codec", "decode_block": "codec", "encode_block": "codec",
    "KVPool": "kv_pool",
    "LoadRecorder": "load_stats", "expert_load_tokens_per_s": "load_stats",
    "MempoolMetrics": "metrics", "mempool_metrics": "metrics",
    "Heartbeat": "registry", "RegistryReader": "registry", "ReplicaInfo": "registry",
    "SyncKVPool": "sync_pool",
}

__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'eaas.mempool' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"eaas.mempool.{_HOME[name]}"), name)
    globals()[name] = value
    return value


if TYPE_CHECKING:
    from eaas.mempool.codec import RejectedBlock, chain_hashes, decode_block, encode_block
    from eaas.mempool.kv_pool import KVPool
    from eaas.mempool.load_stats import LoadRecorder, expert_load_tokens_per_s
    from eaas.mempool.metrics import MempoolMetrics, mempool_metrics
    from eaas.mempool.registry import Heartbeat, RegistryReader, ReplicaInfo
    from eaas.mempool.sync_pool import SyncKVPool
