"""MemPool: KV-cache blocks, expert registry and load statistics (Redis or in-process).

Every part is created with `from_url(url)`: a redis:// or rediss:// URL for the shared Redis backend
(production), or None for the in-process backend (`eaas up` without --redis). See docs/mempool.md.
"""

from eaas.mempool.codec import RejectedBlock, chain_hashes, decode_block, encode_block
from eaas.mempool.kv_pool import KVPool
from eaas.mempool.load_stats import LoadRecorder, expert_load_tokens_per_s
from eaas.mempool.metrics import MempoolMetrics, mempool_metrics
from eaas.mempool.registry import Heartbeat, RegistryReader, ReplicaInfo
from eaas.mempool.sync_pool import SyncKVPool

__all__ = [
    "Heartbeat", "KVPool", "LoadRecorder", "MempoolMetrics", "RegistryReader", "RejectedBlock", "ReplicaInfo",
    "SyncKVPool", "chain_hashes", "decode_block", "encode_block", "expert_load_tokens_per_s", "mempool_metrics",
]
