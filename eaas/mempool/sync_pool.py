"""SyncKVPool: the KVPool for code without an event loop (the engine's worker thread).

The async pool runs on its own event-loop thread; each call waits at most `timeout_s` and then answers
like an unavailable store (match = miss, insert = 0 blocks), counted as errors_total{kind="timeout"}.
Use KVPool directly from async code (the gateway), SyncKVPool from threads.
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
    def __init__(self, make_pool: Callable[[], KVPool], *, timeout_s: float = 1.0):
        """make_pool runs on the pool's loop thread (e.g. lambda: KVPool.from_url(url, fingerprint=...))."""
        self.timeout_s = timeout_s
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
