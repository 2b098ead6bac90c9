"""Reads per-expert load windows from Redis and deletes a deployment's keys (docs/redis-schema.md).

Key: `eaas:{deployment}:load:{bucket}`, a hash expert id -> tokens routed in that 10-second window.
"""

from __future__ import annotations

import math

import redis

from eaas.topology import ExpertGroup

BUCKET_SECONDS = 10
UNLINK_BATCH = 500


def complete_buckets(now: float, count: int) -> list[int]:
    """Start times of the `count` most recent complete windows; the still-open one is skipped."""
    open_bucket = math.floor(now / BUCKET_SECONDS) * BUCKET_SECONDS
    return [open_bucket - BUCKET_SECONDS * i for i in range(1, count + 1)]


def load_key(deployment: str, bucket: int) -> str:
    return f"eaas:{deployment}:load:{bucket}"


def expert_rates(client: redis.Redis, deployment: str, now: float, windows: int) -> dict[int, float]:
    """Tokens/s per expert id averaged over the last `windows` complete windows (absent windows count as 0)."""
    pipe = client.pipeline(transaction=False)
    for bucket in complete_buckets(now, windows):
        pipe.hgetall(load_key(deployment, bucket))
    totals: dict[int, int] = {}
    for window in pipe.execute():
        for expert, tokens in window.items():
            expert_id = int(expert)
            totals[expert_id] = totals.get(expert_id, 0) + int(tokens)
    return {e: tokens / (BUCKET_SECONDS * windows) for e, tokens in totals.items()}


def group_rates(rates: dict[int, float], groups: list[ExpertGroup]) -> dict[str, float]:
    """A group's load is the sum over the expert ids it hosts."""
    return {g.name: sum(rates.get(e, 0.0) for e in g.experts) for g in groups}


def delete_deployment_keys(client: redis.Redis, deployment: str) -> int:
    """UNLINK every key `eaas:{deployment}:*`; returns how many were removed."""
    removed = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"eaas:{deployment}:*", count=UNLINK_BATCH):
        batch.append(key)
        if len(batch) >= UNLINK_BATCH:
            removed += client.unlink(*batch)
            batch.clear()
    if batch:
        removed += client.unlink(*batch)
    return removed


def redis_client(url: str, timeout: float = 3.0) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
