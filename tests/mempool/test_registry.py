"""Expert replica registry: heartbeats with a TTL, the live table, and the fallback when Redis is gone."""

from __future__ import annotations

import asyncio
import json

from eaas.mempool.registry import Heartbeat, RegistryReader, ReplicaInfo


def replica(port: int, group: str = "g0") -> ReplicaInfo:
    return ReplicaInfo(address=f"10.0.0.7:{port}", group=group, layers=(0, 1, 2), experts=(4, 5, 6, 7),
                       fingerprint="tiny-moe", started=1_790_000_000)


def test_replica_appears_while_beating_and_leaves_after_its_ttl_once_it_stops(backend):
    async def run():
        reader = RegistryReader.from_url(backend.url, deployment=backend.deployment,
                                         metrics_registry=backend.metrics_registry)
        crashing = Heartbeat.from_url(backend.url, replica(5001), deployment=backend.deployment,
                                      ttl_s=1.5, interval_s=0.25, metrics_registry=backend.metrics_registry)
        leaving = Heartbeat.from_url(backend.url, replica(5002, "g1"), deployment=backend.deployment,
                                     ttl_s=1.5, interval_s=0.25, metrics_registry=backend.metrics_registry)
        assert await crashing.start() and await leaving.start()
        seen = {"start": set(await reader.replicas())}
        await asyncio.sleep(2.0)  # longer than the TTL: only the refreshes keep them
        seen["after 2 s of beats"] = set(await reader.replicas())
        await leaving.stop()
        seen["after a clean stop"] = set(await reader.replicas())
        crashing._task.cancel()  # a crash: no more beats, no deregistration
        crashed_at = asyncio.get_running_loop().time()
        await asyncio.sleep(0.6)  # the last beat was at most 0.25 s before: it expires 1.25..1.5 s after the crash
        seen["0.6 s after the crash"] = set(await reader.replicas())
        # Poll for the expiry rather than sleep a fixed time: on a loaded machine one scan may time out, and the
        # reader then answers its last known table (flagged stale), which must not count as "still registered".
        while True:
            table = await reader.replicas()
            gone_after = asyncio.get_running_loop().time() - crashed_at
            if not reader.stale and not table or gone_after > 10.0:
                break
            await asyncio.sleep(0.05)
        await reader.close()
        return seen, table, gone_after

    seen, table, gone_after = asyncio.run(run())
    both, first = {"10.0.0.7:5001", "10.0.0.7:5002"}, {"10.0.0.7:5001"}
    assert seen == {"start": both, "after 2 s of beats": both, "after a clean stop": first,
                    "0.6 s after the crash": first}
    assert table == {}
    assert 1.0 < gone_after < 5.0, f"the crashed replica left {gone_after:.2f} s after the crash; its TTL is 1.5 s"


def test_reader_answers_the_last_known_table_while_redis_is_down(redis_backend):
    server = redis_backend.server

    async def run():
        reader = RegistryReader.from_url(server.url, deployment=redis_backend.deployment)
        beat = Heartbeat.from_url(server.url, replica(5001), deployment=redis_backend.deployment,
                                  ttl_s=1.0, interval_s=0.2)
        await beat.start()
        live = await reader.replicas()
        server.stop()
        during = [(await reader.replicas(), reader.stale)]
        await asyncio.sleep(0.5)  # heartbeats fail meanwhile, silently after the first log line
        during.append((await reader.replicas(), reader.stale))
        server.start()  # an empty Redis: the next beat re-registers, nothing restarts
        await asyncio.sleep(1.6)  # past the guard's cooldown and one more beat
        after = (await reader.replicas(), reader.stale)
        await beat.stop()
        await reader.close()
        return live, during, after

    live, during, after = asyncio.run(run())
    assert live == {"10.0.0.7:5001": replica(5001)}
    assert during == [(live, True), (live, True)]
    assert after == (live, False)


def test_registry_entry_is_exactly_the_schema_json_with_its_ttl(redis_backend):
    key = f"eaas:{redis_backend.deployment}:registry:10.0.0.7:5001"

    async def run():
        beat = Heartbeat.from_url(redis_backend.url, replica(5001), deployment=redis_backend.deployment)
        await beat.start()
        raw = redis_backend.raw()
        value, ttl_ms = raw.get(key), raw.pttl(key)
        await beat.stop()
        return value, ttl_ms, raw.exists(key)

    value, ttl_ms, exists_after_stop = asyncio.run(run())
    assert json.loads(value) == {"address": "10.0.0.7:5001", "experts": [4, 5, 6, 7], "layers": [0, 1, 2],
                                 "fingerprint": "tiny-moe", "group": "g0", "started": 1_790_000_000}
    assert 9_000 < ttl_ms <= 10_000
    assert exists_after_stop == 0
