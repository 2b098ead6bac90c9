"""Expert replica registry: servers announce themselves with a TTL heartbeat, gateways read the live table.

A replica is one key `eaas:{deployment}:registry:{address}` holding its ReplicaInfo as JSON with a TTL
(default 10 s) that its Heartbeat refreshes (default every 3 s). A replica that dies simply stops
refreshing and its key expires: nothing else has to notice. RegistryReader answers the last table it
read while Redis is unavailable, so gateways keep routing to the replicas they knew.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from eaas.mempool.background import cancel_and_wait
from eaas.mempool.keys import DeploymentKeys
from eaas.mempool.metrics import MempoolMetrics, mempool_metrics
from eaas.mempool.redis_link import RedisGuard, connect, describe

log = logging.getLogger("eaas.mempool")

DEFAULT_TTL_S = 10.0
DEFAULT_INTERVAL_S = 3.0


@dataclass(frozen=True)
class ReplicaInfo:
    address: str                  # host:port of the expert server's gRPC endpoint
    group: str                    # expert group name, e.g. "g0"
    layers: tuple[int, ...]       # MoE layer ids it serves
    experts: tuple[int, ...]      # expert ids it hosts in every one of those layers
    fingerprint: str              # checkpoint fingerprint: gateways only use replicas of their model
    started: int = field(default_factory=lambda: int(time.time()))  # unix seconds

    def to_json(self) -> str:
        return json.dumps({"address": self.address, "experts": list(self.experts), "layers": list(self.layers),
                           "fingerprint": self.fingerprint, "group": self.group, "started": self.started},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, raw: str | bytes) -> "ReplicaInfo":
        d = json.loads(raw)
        return cls(address=str(d["address"]), group=str(d["group"]), layers=tuple(int(i) for i in d["layers"]),
                   experts=tuple(int(i) for i in d["experts"]), fingerprint=str(d["fingerprint"]),
                   started=int(d["started"]))


class RegistryStore(Protocol):
    async def put(self, info: ReplicaInfo, ttl_s: float) -> bool: ...

    async def remove(self, address: str) -> None: ...

    async def scan(self) -> dict[str, ReplicaInfo] | None:
        """The live table, or None when the store cannot be read."""

    async def close(self) -> None: ...


class RedisRegistryStore:
    def __init__(self, client: aioredis.Redis, keys: DeploymentKeys, guard: RedisGuard):
        self.client = client
        self.keys = keys
        self._guard = guard
        self._bad_logged = False

    @classmethod
    def from_url(cls, url: str, deployment: str, metrics: MempoolMetrics, role: str) -> "RedisRegistryStore":
        client = connect(url)
        return cls(client, DeploymentKeys(deployment), RedisGuard(role, describe(client), metrics.errors))

    async def put(self, info: ReplicaInfo, ttl_s: float) -> bool:
        key, px = self.keys.registry(info.address), max(1, int(ttl_s * 1000))
        return await self._guard.call("heartbeat", lambda: self.client.set(key, info.to_json(), px=px), False)

    async def remove(self, address: str) -> None:
        await self._guard.call("deregister", lambda: self.client.delete(self.keys.registry(address)), None)

    async def scan(self) -> dict[str, ReplicaInfo] | None:
        return await self._guard.call("registry scan", self._scan, None)

    async def close(self) -> None:
        await self.client.aclose()

    async def _scan(self) -> dict[str, ReplicaInfo]:
        keys = [k async for k in self.client.scan_iter(match=self.keys.registry_pattern, count=1000)]
        table: dict[str, ReplicaInfo] = {}
        for key, raw in zip(keys, await self.client.mget(keys) if keys else []):
            if raw is None:  # expired between SCAN and MGET
                continue
            try:
                info = ReplicaInfo.from_json(raw)
            except (ValueError, KeyError, TypeError) as exc:
                if not self._bad_logged:
                    self._bad_logged = True
                    log.error("registry: ignoring unreadable entry %r: %s", key, exc)
                continue
            table[info.address] = info
        return table


class MemoryRegistryStore:
    """The in-process registry; `shared(deployment)` is the one every component of this process uses."""

    _shared: dict[str, "MemoryRegistryStore"] = {}

    def __init__(self):
        self._entries: dict[str, tuple[ReplicaInfo, float]] = {}  # address -> (info, monotonic deadline)

    @classmethod
    def shared(cls, deployment: str) -> "MemoryRegistryStore":
        return cls._shared.setdefault(deployment, cls())

    async def put(self, info: ReplicaInfo, ttl_s: float) -> bool:
        self._entries[info.address] = (info, time.monotonic() + ttl_s)
        return True

    async def remove(self, address: str) -> None:
        self._entries.pop(address, None)

    async def scan(self) -> dict[str, ReplicaInfo]:
        now = time.monotonic()
        for address in [a for a, (_, deadline) in self._entries.items() if deadline <= now]:
            del self._entries[address]
        return {address: info for address, (info, _) in self._entries.items()}

    async def close(self) -> None:
        pass  # shared with other components of this process


def open_registry_store(url: str | None, deployment: str, metrics: MempoolMetrics, role: str) -> RegistryStore:
    if url is None:
        return MemoryRegistryStore.shared(deployment)
    return RedisRegistryStore.from_url(url, deployment, metrics, role)


class Heartbeat:
    """Keeps one replica registered while it runs: start() registers, stop() deregisters."""

    def __init__(self, store: RegistryStore, info: ReplicaInfo, *, ttl_s: float = DEFAULT_TTL_S,
                 interval_s: float = DEFAULT_INTERVAL_S, metrics: MempoolMetrics | None = None):
        if not 0 < interval_s < ttl_s:
            raise ValueError(f"need 0 < interval_s ({interval_s}) < ttl_s ({ttl_s})")
        self.store = store
        self.info = info
        self.ttl_s = ttl_s
        self.interval_s = interval_s
        self.metrics = metrics or mempool_metrics()
        self._task: asyncio.Task | None = None

    @classmethod
    def from_url(cls, url: str | None, info: ReplicaInfo, *, deployment: str = "local",
                 ttl_s: float = DEFAULT_TTL_S, interval_s: float = DEFAULT_INTERVAL_S,
                 metrics_registry: CollectorRegistry | None = None) -> "Heartbeat":
        metrics = mempool_metrics(metrics_registry)
        store = open_registry_store(url, deployment, metrics, f"heartbeat {info.address}")
        return cls(store, info, ttl_s=ttl_s, interval_s=interval_s, metrics=metrics)

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def beat(self) -> bool:
        """Register (or refresh) once; False when the store is unavailable."""
        start = time.perf_counter()
        ok = await self.store.put(self.info, self.ttl_s)
        self.metrics.op_seconds.labels(op="heartbeat").observe(time.perf_counter() - start)
        return ok

    async def start(self) -> bool:
        """Register now and keep refreshing in the background; returns whether the first beat landed."""
        if self.running:
            raise RuntimeError(f"heartbeat of {self.info.address} already running")
        ok = await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"eaas-heartbeat-{self.info.address}")
        return ok

    async def stop(self) -> None:
        """Stop refreshing and deregister, so gateways drop this replica at once instead of after the TTL."""
        await cancel_and_wait(self._task)
        self._task = None
        await self.store.remove(self.info.address)
        await self.store.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.beat()  # failures are logged once per outage by the store's guard


class RegistryReader:
    """The live replica table for gateways, or the last one read while the store is unavailable."""

    def __init__(self, store: RegistryStore, metrics: MempoolMetrics | None = None):
        self.store = store
        self.metrics = metrics or mempool_metrics()
        self.last_table: dict[str, ReplicaInfo] = {}
        self.stale = False  # True when the last replicas() answer came from last_table

    @classmethod
    def from_url(cls, url: str | None, *, deployment: str = "local",
                 metrics_registry: CollectorRegistry | None = None) -> "RegistryReader":
        metrics = mempool_metrics(metrics_registry)
        return cls(open_registry_store(url, deployment, metrics, "registry reader"), metrics)

    async def replicas(self) -> dict[str, ReplicaInfo]:
        """{address: ReplicaInfo} of every replica whose heartbeat is alive."""
        start = time.perf_counter()
        table = await self.store.scan()
        self.metrics.op_seconds.labels(op="registry_scan").observe(time.perf_counter() - start)
        self.stale = table is None
        if table is not None:
            self.last_table = table
        return dict(self.last_table)

    async def close(self) -> None:
        await self.store.close()
