"""The Redis connection every MemPool part uses, and the guard that turns Redis failures into misses.

Serving must never wait on or fail because of Redis: sockets time out after 0.5 s, redis-py retries a
broken connection once (which is what reconnects after a Redis restart), and after a failure the guard
answers from the fallback without trying for `cooldown_s`, so a dead Redis costs a request nothing.
An outage is logged once when it starts and once when it ends; every degraded call is counted in
eaas_mempool_errors_total{kind="unavailable"}.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Awaitable, Callable, TypeVar

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import RedisError

log = logging.getLogger("eaas.mempool")

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)
T = TypeVar("T")


# The password of a Redis whose URL carries none: what the operator gives pods from a generated Secret
# (an environment variable, so it appears in no command line and no pod spec).
PASSWORD_ENV = "EAAS_REDIS_PASSWORD"


def connect(url: str, *, socket_timeout_s: float = 0.5) -> aioredis.Redis:
    """An asyncio client for redis:// or rediss:// URLs (AUTH and TLS options come from the URL; a
    password in the URL wins over $EAAS_REDIS_PASSWORD)."""
    return aioredis.from_url(
        url,
        password=os.environ.get(PASSWORD_ENV) or None,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.1, base=0.01), retries=1),
        decode_responses=False,
    )


def describe(client: aioredis.Redis) -> str:
    """host:port/db of a client, for log lines (never the password)."""
    kw = client.connection_pool.connection_kwargs
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}/{kw.get('db', 0)}"


class RedisGuard:
    """Runs one Redis call at a time for a component; failures become the caller's fallback value."""

    def __init__(self, component: str, target: str, errors: Counter, cooldown_s: float = 1.0):
        self.component = component
        self.target = target
        self.cooldown_s = cooldown_s
        self._errors = errors
        self._down_since: float | None = None
        self._retry_at = 0.0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    async def call(self, op: str, fn: Callable[[], Awaitable[T]], fallback: T) -> T:
        if time.monotonic() < self._retry_at:
            self._errors.labels(kind="unavailable").inc()
            return fallback
        try:
            result = await fn()
        except REDIS_ERRORS as exc:
            self._failed(op, exc)
            return fallback
        if self._down_since is not None:
            log.warning("%s: redis at %s is back after %.1f s; MemPool calls go through again",
                        self.component, self.target, time.monotonic() - self._down_since)
            self._down_since = None
        return result

    def _failed(self, op: str, exc: BaseException) -> None:
        self._errors.labels(kind="unavailable").inc()
        now = time.monotonic()
        self._retry_at = now + self.cooldown_s
        if self._down_since is None:
            self._down_since = now
            log.error("%s: redis at %s unavailable (%s failed: %s: %s); degrading until it returns "
                      "(KV match = miss, insert dropped, registry = last known table, load kept)",
                      self.component, self.target, op, type(exc).__name__, exc)
