"""A full queue refuses at once: HTTP 429 with Retry-After in OpenAI's error shape, gRPC RESOURCE_EXHAUSTED;
the requests already admitted or queued are served exactly, and serving goes on."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from prometheus_client import REGISTRY

from eaas.engine.factory import monolithic_engine
from eaas.engine.scheduler import ScheduleLimits
from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService
from eaas.gateway.grpc_api import GatewayServicer
from eaas.protos import gateway_pb2, gateway_pb2_grpc

pytestmark = pytest.mark.asyncio

LONG = {"prompt": [5, 6, 7], "max_tokens": 1500, "ignore_eos": True, "stream": True}  # runs until we leave
QUEUED = {"prompt": [9, 10, 11], "max_tokens": 6, "temperature": 0}


@pytest.fixture
def one_at_a_time(tiny_model_dir):
    """One running sequence at most, and room for one more in the queue."""
    svc = EngineService(monolithic_engine(tiny_model_dir, limits=ScheduleLimits(max_num_seqs=1)), None,
                        max_queued_requests=1)
    svc.start()
    yield svc
    svc.stop()


def refused() -> float:
    return REGISTRY.get_sample_value("eaas_gateway_requests_refused_total") or 0.0


async def wait_until(cond, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def test_a_full_queue_answers_429_with_retry_after_and_the_queued_request_is_served(
        one_at_a_time, serve, reference_engine):
    svc = one_at_a_time
    before = refused()
    async with serve(svc) as client:
        running = await client.post("/v1/completions", json=LONG)
        assert running.status == 200
        await running.content.readline()  # its first token: it runs
        queued = asyncio.create_task(client.post("/v1/completions", json=QUEUED))
        assert await wait_until(lambda: svc.queued == 1)

        resp = await client.post("/v1/completions", json={**QUEUED, "stream": True})
        assert resp.status == 429
        wait = int(resp.headers["Retry-After"])  # one request left the queue (the running one) in the last seconds
        assert 1 <= wait <= 60
        err = (await resp.json())["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full" and "1 requests already queued" in err["message"]
        assert f"retry in {wait} s" in err["message"]
        assert refused() - before == 1

        running.close()  # the long one's client leaves: the queued one runs
        done = await queued
        assert done.status == 200
        expected = reference_engine.generate([QUEUED["prompt"]], SamplingParams(max_tokens=6))[0]
        assert (await done.json())["choices"][0]["token_ids"] == expected
        again = await client.post("/v1/completions", json=QUEUED)  # serving goes on
        assert (await again.json())["choices"][0]["token_ids"] == expected


async def test_a_full_queue_answers_grpc_resource_exhausted(one_at_a_time, reference_engine):
    svc = one_at_a_time
    server = grpc.aio.server()
    gateway_pb2_grpc.add_GatewayServicer_to_server(GatewayServicer(svc, "tiny", gateway_pb2.GatewayInfo()), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = gateway_pb2_grpc.GatewayStub(channel)
            running = stub.Generate(gateway_pb2.GenerateRequest(prompt_ids=[5, 6, 7], max_tokens=1500, ignore_eos=True))
            await running.read()  # its first token: it runs
            queued_call = stub.Generate(gateway_pb2.GenerateRequest(prompt_ids=[9, 10, 11], max_tokens=6))
            queued = asyncio.create_task(_tokens(queued_call))
            assert await wait_until(lambda: svc.queued == 1)

            with pytest.raises(grpc.aio.AioRpcError) as refused_call:
                await _tokens(stub.Generate(gateway_pb2.GenerateRequest(prompt_ids=[1, 2], max_tokens=4)))
            assert refused_call.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "already queued" in refused_call.value.details()

            running.cancel()  # the long one's client leaves: the queued one runs, exactly
            expected = reference_engine.generate([[9, 10, 11]], SamplingParams(max_tokens=6))[0]
            assert await queued == expected
        assert await wait_until(lambda: svc.busy == 0)
    finally:
        await server.stop(None)


async def _tokens(call) -> list[int]:
    return [t async for r in call for t in r.token_ids]


async def test_simultaneous_arrivals_cannot_overfill_the_queue(tiny_model_dir):
    """Arrivals that all await their MemPool lookup at once are still counted one by one."""
    from eaas.gateway.engine_service import QueueFull
    from eaas.mempool import SyncKVPool
    from eaas.model.checkpoint import Checkpoint

    pool = SyncKVPool.from_url(None, fingerprint=Checkpoint(tiny_model_dir).fingerprint(), block_size=4)
    svc = EngineService(monolithic_engine(tiny_model_dir, limits=ScheduleLimits(max_num_seqs=1)), None, pool,
                        max_queued_requests=2)
    svc.start()
    streams = [svc.generate([i + 1, 2, 3], SamplingParams(max_tokens=1500, ignore_eos=True)) for i in range(20)]
    firsts = [asyncio.create_task(s.__anext__()) for s in streams]
    try:
        def refusals() -> int:
            return sum(1 for t in firsts if t.done() and isinstance(t.exception(), QueueFull))

        # one runs and two wait, or two wait if they all came before the engine took the first: nothing else
        # may get in while none of them can finish
        assert await wait_until(lambda: refusals() >= 17)
        await asyncio.sleep(0.2)
        assert refusals() in (17, 18) and svc.queued <= 2
    finally:
        for t in firsts:
            t.cancel()
        await asyncio.gather(*firsts, return_exceptions=True)
        for s in streams:
            await s.aclose()
        assert await wait_until(lambda: svc.busy == 0)
        svc.stop()
        pool.close()


async def test_preempted_sequences_do_not_fill_the_queue_bound(tiny_model_dir):
    """A KV budget that preempts: the preempted wait again, but --max-queued-requests counts only requests
    that never ran, so preemption alone never turns a new arrival into a 429."""
    probe = monolithic_engine(tiny_model_dir, kv_cache_bytes=1, block_size=4)  # one block: its size in bytes
    engine = monolithic_engine(tiny_model_dir, kv_cache_bytes=8 * probe.kv.nbytes, block_size=4)
    svc = EngineService(engine, None, max_queued_requests=1)  # not started: the test steps the engine itself
    for i in range(4):
        engine.add_request([i + 1] * 6, SamplingParams(max_tokens=12, ignore_eos=True))
    engine.step()  # all four fit their prompts (2 blocks each) and start
    assert len(engine.running) == 4 and svc.queued == 0
    while engine.num_preemptions == 0:
        engine.step()  # decoding grows them past 8 blocks: the newest are preempted
    assert engine.waiting and all(s.preempted for s in engine.waiting)
    assert svc.queued == 0  # room for a new request
    engine.add_request([9] * 6, SamplingParams(max_tokens=2))
    assert svc.queued == 1
    while engine.has_unfinished():
        engine.step()
    assert svc.queued == 0 and engine.num_preempted_waiting == 0 and engine.num_started == 5
