"""The gateway's engine service with its MemPool on a real redis-server: prefix reuse, and a Redis that
hangs (SIGSTOP) mid-stream stalls no token stream: pool reads and writes never run on the engine thread."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService
from eaas.mempool import SyncKVPool
from eaas.model.checkpoint import Checkpoint
from eaas.model.tiny import write_tiny_model

pytestmark = [pytest.mark.asyncio, pytest.mark.redis]

FIRST = [11, 42, 7, 99, 3, 250, 18, 64, 5, 77]
SECOND = [200, 13, 9, 41, 160, 2, 88]
STALL_S = 2.5


@pytest.fixture
def model(tmp_path):
    return write_tiny_model(tmp_path / "m", "mixtral", seed=3)


@pytest.fixture
def service(model, redis_server):
    # timeouts longer than the stall: a call made on the engine thread would hold every stream that long
    pool = SyncKVPool.from_url(redis_server.url, deployment=f"stall-{uuid.uuid4().hex[:8]}", block_size=4,
                               fingerprint=Checkpoint(model).fingerprint(), timeout_s=4.0, socket_timeout_s=3.0)
    svc = EngineService(monolithic_engine(model), None, pool)
    svc.start()
    yield svc
    svc.stop()
    pool.close()


async def stream(service, prompt, params, arrivals: list) -> list[int]:
    tokens = []
    async for event in service.generate(prompt, params):
        arrivals.append(time.perf_counter())
        tokens += event.token_ids
    return tokens


def reused() -> float:
    return REGISTRY.get_sample_value("eaas_gateway_prefill_tokens_reused_total") or 0.0


async def test_a_hung_redis_stalls_no_token_stream(model, service, redis_server):
    params = SamplingParams(max_tokens=600, ignore_eos=True)
    expected = monolithic_engine(model).generate([FIRST, SECOND], params)
    first_times, second_times = [], []
    first = asyncio.create_task(stream(service, FIRST, params, first_times))
    deadline = time.monotonic() + 60
    while len(first_times) < 8 and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    assert len(first_times) >= 8, "the stream did not start"

    os.kill(redis_server.proc.pid, signal.SIGSTOP)  # Redis hangs: connections open, nothing answers
    stalled_at = time.perf_counter()
    try:
        second = asyncio.create_task(stream(service, SECOND, params, second_times))  # its lookup hangs too
        await asyncio.sleep(STALL_S)
    finally:
        os.kill(redis_server.proc.pid, signal.SIGCONT)
    resumed_at = time.perf_counter()

    assert await first == expected[0]
    assert await second == expected[1]
    during = [t for t in first_times if stalled_at + 0.2 < t < resumed_at - 0.2]
    # engine-thread calls would have held the stream for the socket timeout (3 s) at every block of 4 tokens
    assert len(during) >= 20, f"only {len(during)} tokens streamed during a {STALL_S}s Redis hang"


async def test_a_follow_up_turn_reuses_the_blocks_the_first_request_wrote(model, service):
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    before = reused()
    first = await stream(service, FIRST, params, [])
    again = await stream(service, FIRST + first, params, [])  # a follow-up turn: prompt + the reply
    # the first request ran 10 + 5 tokens through the model (its last token never is): 3 full blocks of 4,
    # all in Redis by the time its last token was delivered
    assert reused() - before == 12
    assert again == monolithic_engine(model).generate([FIRST + first], params)[0]
