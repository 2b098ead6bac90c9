"""Reads per-expert load windows from Redis and deletes a deployment's keys (docs/redis-schema.md).

Key: `eaas:{deployment}:load:{bucket}`, a hash expert id -> tokens routed in that 10-second window.
"""

from __future__ import annotations

import redis

from eaas.mempool.keys import DeploymentKeys, complete_load_buckets
from eaas.mempool.load_stats import load_rates
from eaas.topology import ExpertGroup

UNLINK_BATCH = 500


def expert_rates(client: redis.Redis, deployment: str, now: float, windows: int) -> dict[int, float]:
    """Tokens/s per expert id averaged over the last `windows` complete windows (absent windows count as 0).

    Key naming, bucket math and the rate are the MemPool's own (eaas.mempool): one definition of the schema.
    """
    return load_rates(_read_windows(client, deployment, complete_load_buckets(now, windows)), windows)


def group_window_readings(client: redis.Redis, deployment: str, groups: list[ExpertGroup], now: float,
                          lookback: int) -> list[list[tuple[float, float]]]:
    """Per group, (window start, tokens/s) of each of the last `lookback` complete load windows, oldest first,
    in one round trip: the predictive policy's input (absent windows count as 0), kept nowhere else."""
    buckets = list(reversed(complete_load_buckets(now, lookback)))
    per_window = [group_rates(load_rates([window], 1), groups)
                  for window in _read_windows(client, deployment, buckets)]
    return [[(float(b), rates[g.name]) for b, rates in zip(buckets, per_window)] for g in groups]


def _read_windows(client: redis.Redis, deployment: str, buckets) -> list[dict[int, int]]:
    """Expert id -> tokens routed, per load window of `buckets`, in one round trip (absent: empty)."""
    keys = DeploymentKeys(deployment)
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(keys.load(bucket))
    return [{int(e): int(n) for e, n in window.items()} for window in pipe.execute()]


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


def redis_client(url: str, timeout: float = 3.0, password: str | None = None) -> redis.Redis:
    """A password in the URL wins over `password` (a managed Redis's, from its Secret)."""
    return redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout, password=password)
