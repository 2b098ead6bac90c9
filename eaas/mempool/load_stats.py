"""Per-expert load statistics: gateways count routed tokens, the autoscaler reads tokens/s per expert.

A gateway adds counts in memory (a dict update per step, no I/O) and flushes them to one hash per
10-second window, `eaas:{deployment}:load:{bucket}` (HINCRBY per expert + EXPIRE 3600, one pipeline).
Counts that cannot be flushed (Redis down) are kept, up to `max_pending_buckets` windows, and land in
their own windows once Redis is back. Readers skip the window that is still open.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from typing import Protocol

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from eaas.mempool.background import cancel_and_wait
from eaas.mempool.keys import LOAD_BUCKET_S, LOAD_KEY_TTL_S, DeploymentKeys, complete_load_buckets, load_bucket
from eaas.mempool.metrics import MempoolMetrics, mempool_metrics
from eaas.mempool.redis_link import RedisGuard, connect, describe

log = logging.getLogger("eaas.mempool")

BucketCounts = dict[int, dict[int, int]]  # bucket start -> expert id -> tokens


def load_rates(bucket_hashes: list[dict[int, int]], windows: int) -> dict[int, float]:
    """tokens/s per expert over `windows` complete windows (absent windows count as zero traffic)."""
    total: Tally[int] = Tally()
    for counts in bucket_hashes:
        total.update(counts)
    return {expert: n / (LOAD_BUCKET_S * windows) for expert, n in sorted(total.items())}


async def read_load_buckets(redis: aioredis.Redis, keys: DeploymentKeys, buckets: list[int]) -> list[dict[int, int]]:
    """{expert: tokens} of each bucket, one round trip; raises redis errors."""
    pipe = redis.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(keys.load(bucket))
    return [{int(e): int(n) for e, n in h.items()} for h in await pipe.execute()]


async def expert_load_tokens_per_s(redis: aioredis.Redis, deployment: str, now: float,
                                   windows: int) -> dict[int, float]:
    """tokens/s of every expert over the last `windows` complete 10 s windows before `now` (for the
    operator's autoscaler). Raises redis errors: the caller decides what missing data means."""
    buckets = complete_load_buckets(now, windows)
    return load_rates(await read_load_buckets(redis, DeploymentKeys(deployment), buckets), windows)


class LoadStore(Protocol):
    async def add(self, counts: BucketCounts) -> bool:
        """Add counts to their windows; False when the store is unavailable (nothing was added)."""

    async def tokens_per_s(self, now: float, windows: int) -> dict[int, float] | None: ...

    async def close(self) -> None: ...


class RedisLoadStore:
    def __init__(self, client: aioredis.Redis, keys: DeploymentKeys, guard: RedisGuard):
        self.client = client
        self.keys = keys
        self._guard = guard

    async def add(self, counts: BucketCounts) -> bool:
        return await self._guard.call("load flush", lambda: self._add(counts), False)

    async def tokens_per_s(self, now: float, windows: int) -> dict[int, float] | None:
        return await self._guard.call(
            "load read", lambda: expert_load_tokens_per_s(self.client, self.keys.deployment, now, windows), None)

    async def close(self) -> None:
        await self.client.aclose()

    async def _add(self, counts: BucketCounts) -> bool:
        # Not a transaction: a partial failure could double-count on retry, but a dropped
        # connection mid-pipeline is rare and the autoscaler averages over minutes.
        pipe = self.client.pipeline(transaction=False)
        for bucket, experts in counts.items():
            key = self.keys.load(bucket)
            for expert, n in experts.items():
                pipe.hincrby(key, str(expert), n)
            pipe.expire(key, LOAD_KEY_TTL_S)
        await pipe.execute()
        return True


class MemoryLoadStore:
    """The in-process store; `shared(deployment)` is the one every component of this process uses."""

    _shared: dict[str, "MemoryLoadStore"] = {}

    def __init__(self):
        self.buckets: BucketCounts = {}

    @classmethod
    def shared(cls, deployment: str) -> "MemoryLoadStore":
        return cls._shared.setdefault(deployment, cls())

    async def add(self, counts: BucketCounts) -> bool:
        oldest_kept = load_bucket(time.time()) - LOAD_KEY_TTL_S  # what Redis would have expired
        for bucket in [b for b in self.buckets if b < oldest_kept]:
            del self.buckets[bucket]
        for bucket, experts in counts.items():
            target = self.buckets.setdefault(bucket, {})
            for expert, n in experts.items():
                target[expert] = target.get(expert, 0) + n
        return True

    async def tokens_per_s(self, now: float, windows: int) -> dict[int, float]:
        return load_rates([self.buckets.get(b, {}) for b in complete_load_buckets(now, windows)], windows)

    async def close(self) -> None:
        pass  # shared with other components of this process


class LoadRecorder:
    """One gateway's routed-token counts, flushed per 10 s window."""

    def __init__(self, store: LoadStore, *, max_pending_buckets: int = LOAD_KEY_TTL_S // LOAD_BUCKET_S,
                 metrics: MempoolMetrics | None = None):
        self.store = store
        self.max_pending_buckets = max_pending_buckets
        self.metrics = metrics or mempool_metrics()
        self.pending: BucketCounts = {}
        self.dropped_tokens = 0  # tokens of windows discarded because Redis stayed down too long
        self._task: asyncio.Task | None = None

    @classmethod
    def from_url(cls, url: str | None, *, deployment: str = "local", metrics_registry: CollectorRegistry | None = None,
                 max_pending_buckets: int = LOAD_KEY_TTL_S // LOAD_BUCKET_S) -> "LoadRecorder":
        metrics = mempool_metrics(metrics_registry)
        if url is None:
            store: LoadStore = MemoryLoadStore.shared(deployment)
        else:
            client = connect(url)
            store = RedisLoadStore(client, DeploymentKeys(deployment),
                                   RedisGuard("load stats", describe(client), metrics.errors))
        return cls(store, max_pending_buckets=max_pending_buckets, metrics=metrics)

    def add(self, counts: dict[int, int], now: float | None = None) -> None:
        """Count tokens routed per expert id (summed over layers) in the window of `now` (default: now)."""
        bucket = self.pending.setdefault(load_bucket(time.time() if now is None else now), {})
        for expert, n in counts.items():
            if n > 0:
                bucket[int(expert)] = bucket.get(int(expert), 0) + int(n)
        self._bound()

    async def flush(self) -> bool:
        """Write every pending window; on failure the counts stay pending for the next flush."""
        if not self.pending:
            return True
        start = time.perf_counter()
        batch, self.pending = self.pending, {}
        ok = await self.store.add(batch)
        if not ok:  # merge back: counts added meanwhile (other tasks) are kept too
            for bucket, experts in batch.items():
                target = self.pending.setdefault(bucket, {})
                for expert, n in experts.items():
                    target[expert] = target.get(expert, 0) + n
            self._bound()
        self.metrics.op_seconds.labels(op="load_flush").observe(time.perf_counter() - start)
        return ok

    def start(self, interval_s: float = LOAD_BUCKET_S) -> None:
        """Flush every interval_s in a background task (on the running event loop)."""
        self._task = asyncio.create_task(self._flush_forever(interval_s), name="eaas-load-flush")

    async def stop(self) -> None:
        """Stop the background flushes, flush what is pending once more and close the store."""
        await cancel_and_wait(self._task)
        self._task = None
        await self.flush()
        await self.store.close()

    async def _flush_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            await self.flush()

    def _bound(self) -> None:
        while len(self.pending) > self.max_pending_buckets:
            oldest = min(self.pending)
            lost = sum(self.pending.pop(oldest).values())
            if not self.dropped_tokens:
                log.error("load stats: more than %d windows pending; dropping the oldest (Redis down too long)",
                          self.max_pending_buckets)
            self.dropped_tokens += lost
