"""Redis outages, restarts, AUTH and TLS: the MemPool degrades, never raises, and recovers by itself."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import torch
from prometheus_client import CollectorRegistry

from eaas.mempool.kv_pool import KVPool
from eaas.mempool.sync_pool import SyncKVPool

BS = 4


def block(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(2, BS, 16, generator=g).bfloat16() for _ in range(4)]


def test_redis_restart_during_inserts_and_matches_degrades_then_recovers(redis_backend, caplog):
    tokens = list(range(2 * BS))
    blocks = [block(0), block(1)]
    restarter = threading.Thread(target=redis_backend.server.restart, kwargs={"down_seconds": 1.5})

    async def run():
        pool = redis_backend.kv_pool()
        outcomes = []  # (phase, inserted, matched tokens)
        deadline = None
        for step in range(400):
            if step == 5:
                restarter.start()
            inserted = await pool.insert(tokens, blocks)
            n, got = await pool.match(tokens)
            if n:
                assert all(torch.equal(a, b) for g, w in zip(got, blocks) for a, b in zip(g, w))
            phase = "before" if step < 5 else ("during" if restarter.is_alive() else "after")
            outcomes.append((phase, inserted, n))
            if phase == "after":
                deadline = deadline or time.monotonic() + 3.0
                if n == 2 * BS or time.monotonic() > deadline:
                    break
            await asyncio.sleep(0.02)
        await pool.close()
        return outcomes

    with caplog.at_level(logging.WARNING, logger="eaas.mempool"):
        outcomes = asyncio.run(run())
    restarter.join()
    assert all(o == ("before", 2, 2 * BS) for o in outcomes[:5])
    assert ("during", 0, 0) in outcomes  # dropped insert, miss: no exception
    assert outcomes[-1][0] == "after" and outcomes[-1][2] == 2 * BS  # the restarted Redis is empty: re-inserted
    assert redis_backend.metric("eaas_mempool_errors_total", kind="unavailable") >= 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("unavailable" in m for m in messages) == 1, messages
    assert sum("is back" in m for m in messages) == 1, messages


def test_unreachable_redis_answers_misses_fast(redis_backend):
    tokens = list(range(2 * BS))
    backend = redis_backend
    backend.server.stop()

    async def run():
        pool = KVPool.from_url(backend.server.url, fingerprint="m", block_size=BS,
                               metrics_registry=backend.metrics_registry)
        timings = []
        for _ in range(20):
            start = time.perf_counter()
            assert await pool.insert(tokens, [block(0), block(1)]) == 0
            assert await pool.match(tokens) == (0, [])
            timings.append(time.perf_counter() - start)
        await pool.close()
        return timings

    timings = asyncio.run(run())
    assert max(timings) < 0.5
    assert sorted(timings)[10] < 0.005  # after the first failure the guard does not even try
    assert backend.metric("eaas_mempool_errors_total", kind="unavailable") == 40


def test_hung_redis_costs_a_sync_caller_at_most_its_timeout(silent_server):
    metrics_registry = CollectorRegistry()
    pool = SyncKVPool.from_url(silent_server, timeout_s=0.1, fingerprint="m", block_size=BS,
                               metrics_registry=metrics_registry)
    try:
        start = time.perf_counter()
        assert pool.match(list(range(2 * BS))) == (0, [])
        assert pool.insert(list(range(BS)), [block(0)]) == 0
        elapsed = time.perf_counter() - start
    finally:
        pool.close()
    assert elapsed < 0.5
    assert metrics_registry.get_sample_value("eaas_mempool_errors_total", {"kind": "timeout"}) == 2


def test_sync_pool_round_trips_from_a_plain_thread(backend):
    tokens = list(range(3 * BS))
    blocks = [block(i) for i in range(3)]
    pool = SyncKVPool.from_url(backend.url, deployment=backend.deployment, fingerprint="m", block_size=BS,
                               metrics_registry=backend.metrics_registry)
    results = []
    worker = threading.Thread(target=lambda: results.extend([pool.insert(tokens, blocks), pool.match(tokens)]))
    worker.start()
    worker.join()
    pool.close()
    inserted, (n, got) = results
    assert inserted == 3 and n == 3 * BS
    assert all(torch.equal(a, b) for g, w in zip(got, blocks) for a, b in zip(g, w))


def test_auth_url_works_and_a_wrong_password_only_degrades(auth_redis_server):
    tokens = list(range(BS))
    wrong_url = auth_redis_server.url.replace("s3cret-pw", "wrong")

    async def run():
        good = KVPool.from_url(auth_redis_server.url, fingerprint="m", block_size=BS)
        bad = KVPool.from_url(wrong_url, fingerprint="m", block_size=BS)
        results = (await good.insert(tokens, [block(0)]), (await good.match(tokens))[0],
                   await bad.insert(tokens, [block(0)]), (await bad.match(tokens))[0])
        await good.close()
        await bad.close()
        return results

    assert asyncio.run(run()) == (1, BS, 0, 0)


def test_password_from_the_environment_serves_a_url_without_one(auth_redis_server, monkeypatch):
    """What the operator gives pods for a managed Redis: a plain URL and $EAAS_REDIS_PASSWORD."""
    tokens = list(range(BS))
    bare_url = auth_redis_server.url.replace(":s3cret-pw@", "")

    async def run():
        pool = KVPool.from_url(bare_url, fingerprint="m", block_size=BS)
        result = (await pool.insert(tokens, [block(0)]), (await pool.match(tokens))[0])
        await pool.close()
        return result

    assert asyncio.run(run()) == (0, 0)  # no password: refused, degraded to misses
    monkeypatch.setenv("EAAS_REDIS_PASSWORD", "s3cret-pw")
    assert asyncio.run(run()) == (1, BS)
    monkeypatch.setenv("EAAS_REDIS_PASSWORD", "wrong")  # a password in the URL wins over the environment
    pool_url = auth_redis_server.url

    async def with_url_password():
        pool = KVPool.from_url(pool_url, fingerprint="m", block_size=BS)
        n = (await pool.match(tokens))[0]
        await pool.close()
        return n

    assert asyncio.run(with_url_password()) == BS


def test_tls_url_round_trips_blocks(tls_redis_server):
    tokens = list(range(2 * BS))

    async def run():
        pool = KVPool.from_url(tls_redis_server.url, fingerprint="m", block_size=BS)
        inserted = await pool.insert(tokens, [block(0), block(1)])
        n, got = await pool.match(tokens)
        await pool.close()
        return inserted, n, got

    inserted, n, got = asyncio.run(run())
    assert (inserted, n) == (2, 2 * BS)
    assert torch.equal(got[1][3], block(1)[3])
