"""Reading load windows and deleting a deployment's keys in a real redis-server (docs/redis-schema.md)."""

from __future__ import annotations

import pytest
import redis

import asyncio

from eaas.mempool import LoadRecorder
from eaas.operator.load import delete_deployment_keys, expert_rates, group_rates, redis_client
from eaas.topology import expert_groups

pytestmark = pytest.mark.redis


def test_what_gateways_record_is_what_the_operator_reads(redis_server):
    """The contract of docs/redis-schema.md, end to end: gateway writer -> operator reader."""
    now = 1_000_005.0

    async def record():
        for gateway in range(2):  # two gateways add into the same windows
            recorder = LoadRecorder.from_url(redis_server.url, deployment="mix")
            recorder.add({0: 400, 3: 40}, now=999_991.0)
            recorder.add({0: 200, 6: 100}, now=999_985.0)
            recorder.add({0: 10_000}, now=now)  # the open window: the operator must not count it
            assert await recorder.flush()
            await recorder.stop()

    asyncio.run(record())
    rates = expert_rates(redis_client(redis_server.url), "mix", now, windows=2)
    assert rates == {0: 2 * 600 / 20, 3: 2 * 40 / 20, 6: 2 * 100 / 20}
    assert group_rates(rates, expert_groups(8, 4)) == {"g0": 64.0, "g1": 10.0}


def test_rates_average_complete_windows_and_ignore_the_open_one(redis_server):
    client = redis_client(redis_server.url)
    now = 1_000_005.0
    client.hset("eaas:mix:load:999990", mapping={"0": 300, "1": 100, "5": 20})
    client.hset("eaas:mix:load:999980", mapping={"0": 300})
    client.hincrby("eaas:mix:load:999980", "0", 300)  # a second gateway adds into the same hash
    client.hset("eaas:mix:load:1000000", mapping={"0": 99_999})  # still open: skipped
    client.hset("eaas:other:load:999990", mapping={"0": 99_999})  # another deployment
    rates = expert_rates(client, "mix", now, windows=2)
    assert rates == {0: 900 / 20, 1: 100 / 20, 5: 20 / 20}
    assert group_rates(rates, expert_groups(8, 4)) == {"g0": 50.0, "g1": 1.0}


def test_delete_unlinks_only_the_deployments_keys(redis_server):
    client = redis_client(redis_server.url)
    for i in range(1200):  # more than one SCAN page and one UNLINK batch
        client.set(f"eaas:mix:kv:fp:{i}", b"x")
    client.hset("eaas:mix:load:10", "0", 1)
    client.set("eaas:mix:registry:10.0.0.1:50051", "{}")
    client.set("eaas:mixtral:load:10", "kept")  # a deployment whose name starts the same
    client.set("other", "kept")
    assert delete_deployment_keys(client, "mix") == 1202
    assert sorted(client.keys("*")) == [b"eaas:mixtral:load:10", b"other"]


def test_unreachable_redis_raises_redis_error_quickly(redis_server):
    url = redis_server.url
    redis_server.stop()
    with pytest.raises(redis.RedisError):
        expert_rates(redis_client(url, timeout=1.0), "mix", 1_000_000.0, 1)
