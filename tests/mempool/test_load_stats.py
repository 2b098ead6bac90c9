"""Per-expert load statistics: exact keys per docs/redis-schema.md, rates, and counts kept through outages."""

from __future__ import annotations

import asyncio
import time


from eaas.mempool.keys import complete_load_buckets, load_bucket
from eaas.mempool.load_stats import LoadRecorder, expert_load_tokens_per_s


def test_bucket_helpers_follow_the_schema():
    assert load_bucket(1_790_000_009.99) == 1_790_000_000
    assert load_bucket(1_790_000_010) == 1_790_000_010
    assert complete_load_buckets(1_790_000_025.5, 3) == [1_790_000_010, 1_790_000_000, 1_789_999_990]


def test_two_gateways_flush_into_the_schema_hashes(redis_backend):
    now = time.time()
    earlier, current = load_bucket(now) - 20, load_bucket(now)
    d = redis_backend.deployment

    async def run():
        gateways = [LoadRecorder.from_url(redis_backend.url, deployment=d) for _ in range(2)]
        gateways[0].add({3: 5, 7: 1, 9: 0}, now=earlier + 1)
        gateways[0].add({3: 2}, now=earlier + 9.9)
        gateways[1].add({3: 10, 8: 4}, now=earlier + 4)
        gateways[1].add({7: 6}, now=current)
        assert all([await g.flush() for g in gateways])
        assert [g.pending for g in gateways] == [{}, {}]
        for g in gateways:
            await g.stop()

    asyncio.run(run())
    raw = redis_backend.raw()
    assert raw.hgetall(f"eaas:{d}:load:{earlier}") == {b"3": b"17", b"7": b"1", b"8": b"4"}
    assert raw.hgetall(f"eaas:{d}:load:{current}") == {b"7": b"6"}
    assert 3590 <= raw.ttl(f"eaas:{d}:load:{earlier}") <= 3600
    assert sorted(raw.scan_iter(f"eaas:{d}:load:*")) == sorted(
        [f"eaas:{d}:load:{earlier}".encode(), f"eaas:{d}:load:{current}".encode()])


def test_tokens_per_s_averages_complete_windows_and_skips_the_open_one(backend):
    now = time.time()
    open_bucket = load_bucket(now)

    async def run():
        recorder = LoadRecorder.from_url(backend.url, deployment=backend.deployment)
        recorder.add({1: 100, 2: 30}, now=open_bucket - 10)
        recorder.add({1: 50}, now=open_bucket - 30)
        recorder.add({1: 1000}, now=open_bucket - 40)  # outside 3 windows
        recorder.add({2: 999}, now=now)  # the open window
        await recorder.flush()
        rates = await recorder.store.tokens_per_s(now, 3)
        if backend.server is not None:  # the operator's helper, on a plain client
            assert await expert_load_tokens_per_s(recorder.store.client, backend.deployment, now, 3) == rates
        await recorder.stop()
        return rates

    assert asyncio.run(run()) == {1: 150 / 30, 2: 30 / 30}


def test_counts_survive_a_redis_outage_and_land_in_their_own_windows(redis_backend):
    now = time.time()
    bucket = load_bucket(now)
    d = redis_backend.deployment

    async def run():
        recorder = LoadRecorder.from_url(redis_backend.url, deployment=d)
        redis_backend.server.stop()
        recorder.add({4: 3}, now=now - 10)
        first = await recorder.flush()
        recorder.add({4: 2, 5: 1}, now=now)
        second = await recorder.flush()  # within the guard's cooldown
        kept = {b: dict(c) for b, c in recorder.pending.items()}
        redis_backend.server.start()
        await asyncio.sleep(1.1)  # past the cooldown
        third = await recorder.flush()
        await recorder.stop()
        return first, second, kept, third

    first, second, kept, third = asyncio.run(run())
    assert (first, second, third) == (False, False, True)
    assert kept == {bucket - 10: {4: 3}, bucket: {4: 2, 5: 1}}
    raw = redis_backend.raw()
    assert raw.hgetall(f"eaas:{d}:load:{bucket - 10}") == {b"4": b"3"}
    assert raw.hgetall(f"eaas:{d}:load:{bucket}") == {b"4": b"2", b"5": b"1"}


def test_pending_windows_are_bounded_while_redis_stays_down(redis_backend):
    now = time.time()

    async def run():
        recorder = LoadRecorder.from_url(redis_backend.url, deployment=redis_backend.deployment,
                                         max_pending_buckets=3)
        redis_backend.server.stop()
        for i in range(5):
            recorder.add({1: 10 + i}, now=now - 10 * (4 - i))
            await recorder.flush()
        pending = sorted(recorder.pending)
        await recorder.store.close()
        return pending, recorder.dropped_tokens

    pending, dropped = asyncio.run(run())
    bucket = load_bucket(now)
    assert pending == [bucket - 20, bucket - 10, bucket]
    assert dropped == 10 + 11
