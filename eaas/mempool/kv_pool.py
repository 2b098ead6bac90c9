"""KVPool: KV-cache blocks indexed by token prefix (MemServe's MemPool index: insert / match / delete).

A block holds the KV tensors of `block_size` consecutive tokens and is named by the chain hash of all
tokens up to its end, so a hit is always an exact prefix of the same model (fingerprint). Blocks live in
Redis (shared by all gateways; `from_url("redis://…")`) or in this process (`from_url(None)`).
Redis failures never raise: match answers a miss, insert is dropped (see redis_link.py). Damaged or
foreign values are refused, counted in eaas_mempool_errors_total{kind="corrupt"|"foreign"}, deleted,
and treated as the end of the stored prefix.
"""

from __future__ import annotations

import asyncio
import logging
import time

import torch
from prometheus_client import CollectorRegistry

from eaas.mempool import codec
from eaas.mempool.keys import DeploymentKeys
from eaas.mempool.kv_store import KVStore, MemoryKVStore, RedisKVStore
from eaas.mempool.metrics import MempoolMetrics, mempool_metrics
from eaas.mempool.redis_link import RedisGuard, connect, describe

log = logging.getLogger("eaas.mempool")

DEFAULT_TTL_S = 3600.0
DEFAULT_BUDGET_BYTES = 1 << 30
_OFFLOAD_BYTES = 1 << 20  # encode/decode more than this off the event loop, which serves requests

Block = list[torch.Tensor]


class KVPool:
    def __init__(self, store: KVStore, *, fingerprint: str, block_size: int,
                 layout: codec.Layout | None = None, metrics: MempoolMetrics | None = None):
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.store = store
        self.fingerprint = codec.check_fingerprint(fingerprint)
        self.block_size = block_size
        self.layout = layout
        self.metrics = metrics or mempool_metrics()
        self._keys = store.keys
        self._rejection_logged = False

    @classmethod
    def from_url(cls, url: str | None, *, deployment: str = "local", fingerprint: str, block_size: int = 16,
                 ttl_s: float = DEFAULT_TTL_S, budget_bytes: int | None = DEFAULT_BUDGET_BYTES,
                 layout: codec.Layout | None = None, metrics_registry: CollectorRegistry | None = None,
                 socket_timeout_s: float = 0.5) -> "KVPool":
        """A pool on Redis at `url` (redis:// or rediss://, AUTH in the URL) or in-process when url is None.

        budget_bytes caps the framed bytes of this deployment's blocks (all fingerprints together);
        None keeps blocks until their TTL. layout, when given, is the (dtype, shape) of every tensor of
        a block: inserts must match it and stored values with another layout are refused.
        """
        keys = DeploymentKeys(deployment)
        metrics = mempool_metrics(metrics_registry)
        if url is None:
            store: KVStore = MemoryKVStore(keys, ttl_s=ttl_s, budget_bytes=budget_bytes)
        else:
            client = connect(url, socket_timeout_s=socket_timeout_s)
            guard = RedisGuard("kv pool", describe(client), metrics.errors)
            store = RedisKVStore(client, keys, guard, ttl_s=ttl_s, budget_bytes=budget_bytes)
        return cls(store, fingerprint=fingerprint, block_size=block_size, layout=layout, metrics=metrics)

    def chain_hashes(self, token_ids: list[int]) -> list[str]:
        return codec.chain_hashes(self.fingerprint, self.block_size, token_ids)

    def value_keys(self, token_ids: list[int]) -> list[str]:
        """The Redis key (first chunk) of every full block of token_ids, for tools and debugging."""
        return [self._keys.kv_key(self._member(h)) for h in self.chain_hashes(token_ids)]

    async def insert(self, token_ids: list[int], blocks: list[Block | None]) -> int:
        """Store blocks[i] as the KV of token_ids[i*bs:(i+1)*bs]; None entries (e.g. blocks that came from
        match) are skipped. Returns the number of blocks handed to the store (0 when it is unavailable).
        """
        start = time.perf_counter()
        hashes = self.chain_hashes(token_ids)
        if len(blocks) > len(hashes):
            raise ValueError(f"{len(blocks)} blocks for {len(token_ids)} tokens: only "
                             f"{len(hashes)} full blocks of {self.block_size}")
        todo = [(h, b) for h, b in zip(hashes, blocks) if b is not None]
        if self.layout is not None:
            for h, block in todo:
                if codec.layout_of(block) != [(d, tuple(s)) for d, s in self.layout]:
                    raise ValueError(f"block layout {codec.layout_of(block)} differs from {self.layout}")
        if not todo:
            return 0
        nbytes = sum(t.nbytes for _, b in todo for t in b)
        entries = await self._offload(nbytes, self._encode_all, todo)
        stored = await self.store.write(entries)
        if stored:
            self.metrics.bytes_written.inc(sum(len(f) for _, f in entries))
        self.metrics.op_seconds.labels(op="insert").observe(time.perf_counter() - start)
        return len(entries) if stored else 0

    async def match(self, token_ids: list[int]) -> tuple[int, list[Block]]:
        """(n_tokens, blocks) of the longest stored prefix of full blocks; n_tokens = len(blocks) * bs."""
        start = time.perf_counter()
        hashes = self.chain_hashes(token_ids)
        blocks: list[Block] = []
        if hashes:
            frames = await self.store.read([self._member(h) for h in hashes])
            self.metrics.bytes_read.inc(sum(len(f) for f in frames))
            blocks, rejected = await self._offload(sum(len(f) for f in frames), self._decode_prefix,
                                                   hashes, frames)
            if rejected is not None:
                await self._refuse(hashes[len(blocks)], rejected)
            self.metrics.hits.inc(len(blocks))
            self.metrics.misses.inc(len(hashes) - len(blocks))
        self.metrics.op_seconds.labels(op="match").observe(time.perf_counter() - start)
        return len(blocks) * self.block_size, blocks

    async def delete(self, token_ids: list[int]) -> None:
        """Forget every full block of token_ids (the whole chain, not only its last block)."""
        start = time.perf_counter()
        await self.store.delete([self._member(h) for h in self.chain_hashes(token_ids)])
        self.metrics.op_seconds.labels(op="delete").observe(time.perf_counter() - start)

    async def close(self) -> None:
        await self.store.close()

    def _member(self, chain_hash: str) -> str:
        return self._keys.kv_member(self.fingerprint, chain_hash)

    def _encode_all(self, todo: list[tuple[str, Block]]) -> list[tuple[str, bytes]]:
        return [(self._member(h), codec.encode_block(b, fingerprint=self.fingerprint, chain_hash=h,
                                                     block_size=self.block_size)) for h, b in todo]

    def _decode_prefix(self, hashes: list[str], frames: list[bytes]
                       ) -> tuple[list[Block], codec.RejectedBlock | None]:
        blocks = []
        for h, frame in zip(hashes, frames):
            try:
                blocks.append(codec.decode_block(frame, fingerprint=self.fingerprint, chain_hash=h,
                                                 block_size=self.block_size, layout=self.layout))
            except codec.RejectedBlock as exc:
                return blocks, exc
        return blocks, None

    async def _refuse(self, chain_hash: str, exc: codec.RejectedBlock) -> None:
        self.metrics.errors.labels(kind=exc.kind).inc()
        key = self._keys.kv_key(self._member(chain_hash))
        if not self._rejection_logged:  # once per pool: a flood of these would only repeat itself
            self._rejection_logged = True
            log.error("kv pool: refused stored value %s (%s: %s); deleted and treated as a miss. Further "
                      "refusals are only counted in eaas_mempool_errors_total", key, exc.kind, exc)
        await self.store.delete([self._member(chain_hash)])

    @staticmethod
    async def _offload(nbytes: int, fn, *args):
        if nbytes > _OFFLOAD_BYTES:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)
