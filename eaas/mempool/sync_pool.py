"""SyncKVPool: the KVPool for code without an event loop (the engine's worker thread).

The async pool runs on its own event-loop thread; each call waits at most `timeout_s` and then answers
like an unavailable store (match = miss, insert = 0 blocks), counted as errors_total{kind="timeout"}.
Use KVPool directly from async code (the gateway), SyncKVPool from threads.

A serving thread should not wait on the store at all: `insert_in_background` hands the write to the
pool's thread and returns at once (at most `max_pending` writes queue up; more are refused, so a
stalled Redis costs cache entries, never memory or step time), and `match_async` lets code on another
event loop await a lookup without blocking its thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Callable, Coroutine

from eaas.mempool.kv_pool import Block, KVPool


class LoopThread:
    """A daemon thread running one asyncio event loop, for calling coroutines from blocking code."""

    def __init__(self, name: str = "eaas-mempool"):
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def submit(self, coro: Coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class SyncKVPool:
    def __init__(self, make_pool: Callable[[], KVPool], *, timeout_s: float = 1.0, max_pending: int = 256):
        """make_pool runs on the pool's loop thread (e.g. lambda: KVPool.from_url(url, fingerprint=...))."""
        self.timeout_s = timeout_s
        self.max_pending = max_pending
        self._pending = 0  # background inserts submitted and not finished
        self._pending_lock = threading.Lock()
        self._loop = LoopThread()

        async def build() -> KVPool:
            return make_pool()

        self.pool: KVPool = self._loop.submit(build()).result()

    @classmethod
    def from_url(cls, url: str | None, *, timeout_s: float = 1.0, **pool_kwargs: Any) -> "SyncKVPool":
        return cls(lambda: KVPool.from_url(url, **pool_kwargs), timeout_s=timeout_s)

    @property
    def block_size(self) -> int:
        return self.pool.block_size

    def insert(self, token_ids: list[int], blocks: list[Block | None], timeout_s: float | None = None) -> int:
        return self._wait(self.pool.insert(token_ids, blocks), timeout_s, fallback=0)

    def insert_in_background(self, token_ids: list[int], blocks: list[Block | None]
                             ) -> concurrent.futures.Future | None:
        """Start an insert and return at once: a future of the blocks stored (0 on failure or after timeout_s),
        or None when max_pending inserts are already queued (counted as errors{kind="backlog"})."""
        with self._pending_lock:
            if self._pending >= self.max_pending:
                self.pool.metrics.errors.labels(kind="backlog").inc()
                return None
            self._pending += 1
        future = self._loop.submit(self._bounded(self.pool.insert(token_ids, blocks), fallback=0))
        future.add_done_callback(self._insert_done)
        return future

    def _insert_done(self, _future) -> None:
        with self._pending_lock:
            self._pending -= 1

    async def _bounded(self, coro: Coroutine, fallback: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, self.timeout_s)
        except asyncio.TimeoutError:
            self.pool.metrics.errors.labels(kind="timeout").inc()
            return fallback

    async def match_async(self, token_ids: list[int]) -> tuple[int, list[Block]]:
        """match() for code on another event loop: awaits the pool's thread, never blocks the caller's."""
        return await asyncio.wrap_future(self._loop.submit(self._bounded(self.pool.match(token_ids), (0, []))))

    def match(self, token_ids: list[int], timeout_s: float | None = None) -> tuple[int, list[Block]]:
        return self._wait(self.pool.match(token_ids), timeout_s, fallback=(0, []))

    def delete(self, token_ids: list[int], timeout_s: float | None = None) -> None:
        self._wait(self.pool.delete(token_ids), timeout_s, fallback=None)

    def close(self) -> None:
        try:
            self._loop.submit(self.pool.close()).result(5)
        finally:
            self._loop.stop()

    def _wait(self, coro: Coroutine, timeout_s: float | None, fallback: Any) -> Any:
        future = self._loop.submit(coro)
        try:
            return future.result(self.timeout_s if timeout_s is None else timeout_s)
        except concurrent.futures.TimeoutError:
            future.cancel()  # the serving thread moves on; the pool drops the late call
            self.pool.metrics.errors.labels(kind="timeout").inc()
            return fallback
