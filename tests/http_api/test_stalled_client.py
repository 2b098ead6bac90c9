"""A client that sends a request and never reads cannot pin a sequence: once its output stops draining for
the stall timeout, the gateway aborts the generation (KV freed long before max_tokens), drops the stream,
counts it in eaas_gateway_stalled_streams_total{api} and keeps serving. Real raw-socket clients, real
servers (aiohttp app, grpc.aio server) over a real engine. Also: the gRPC server announces its
per-connection stream limit."""

from __future__ import annotations

import asyncio
import time

import pytest
from gateway_grpc import grpc_gateway
from prometheus_client import REGISTRY
from raw_clients import REFUSED_STREAM, SETTINGS_MAX_CONCURRENT_STREAMS, RawH2, stalled_http_stream

from eaas.client import AsyncClient
from eaas.protos import gateway_pb2

MAX_TOKENS = 2000  # far more than the socket buffers hold: the stream stalls long before the end
PROMPT = [1, 17, 42]


def _sample(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


async def _until(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_http_client_that_never_reads_is_aborted_and_its_kv_freed(service, serve):
    before = _sample("eaas_gateway_stalled_streams_total", {"api": "http"})
    tokens_before = _sample("eaas_gateway_generated_tokens_total")
    async with serve(service, stall_timeout_s=0.5) as session:
        port = session._base_url.port
        body = {"prompt": PROMPT, "max_tokens": MAX_TOKENS, "ignore_eos": True, "stream": True}
        sock = await asyncio.to_thread(stalled_http_stream, port, body)
        try:
            await _until(lambda: _sample("eaas_gateway_stalled_streams_total", {"api": "http"}) > before,
                         what="the stalled HTTP stream detected")
            await _until(lambda: service.busy == 0 and service.engine.blocks.num_used == 0,
                         what="the stalled request's sequence and KV freed")
            generated = _sample("eaas_gateway_generated_tokens_total") - tokens_before
            assert 0 < generated < MAX_TOKENS  # aborted mid-way, not run to the end
            # the server still serves a client that reads
            async with session.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3}) as resp:
                assert resp.status == 200 and len((await resp.json())["choices"][0]["token_ids"]) == 3
        finally:
            sock.close()


@pytest.mark.asyncio
async def test_grpc_client_that_never_reads_is_aborted_and_its_kv_freed(service):
    before = _sample("eaas_gateway_stalled_streams_total", {"api": "grpc"})
    tokens_before = _sample("eaas_gateway_generated_tokens_total")
    async with grpc_gateway(service, stall_timeout_s=0.5) as address:
        port = int(address.rsplit(":", 1)[1])
        request = gateway_pb2.GenerateRequest(prompt_ids=PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True,
                                              request_id="stalled-grpc")
        h2 = await asyncio.to_thread(RawH2, port, 64)  # 64 bytes of window, never reopened
        try:
            await asyncio.to_thread(h2.start_call, 1, "/eaas.v1.Gateway/Generate", request.SerializeToString())
            await _until(lambda: _sample("eaas_gateway_stalled_streams_total", {"api": "grpc"}) > before,
                         what="the stalled gRPC stream detected")
            await _until(lambda: service.busy == 0 and service.engine.blocks.num_used == 0,
                         what="the stalled request's sequence and KV freed")
            generated = _sample("eaas_gateway_generated_tokens_total") - tokens_before
            assert 0 < generated < MAX_TOKENS
            async with AsyncClient([address], timeout=60) as client:  # a reading client is still served
                assert len((await client.generate(prompt_ids=PROMPT, max_tokens=3)).token_ids) == 3
        finally:
            h2.close()


@pytest.mark.asyncio
async def test_grpc_streams_per_connection_are_limited(service):
    """The limit is announced; a client that opens one stream more anyway has that stream refused."""
    async with grpc_gateway(service, max_concurrent_streams=3) as address:
        h2 = await asyncio.to_thread(RawH2, int(address.rsplit(":", 1)[1]), 64)
        try:
            assert h2.server_settings.get(SETTINGS_MAX_CONCURRENT_STREAMS) == 3
            request = gateway_pb2.GenerateRequest(prompt_ids=PROMPT, max_tokens=MAX_TOKENS, ignore_eos=True)
            for stream in (1, 3, 5, 7):  # three held open (their window stays shut), a fourth
                await asyncio.to_thread(h2.start_call, stream, "/eaas.v1.Gateway/Generate",
                                        request.SerializeToString())
            assert await asyncio.to_thread(h2.reset_code, 7) == REFUSED_STREAM
        finally:
            h2.close()
        await _until(lambda: service.busy == 0, what="the three held streams ended with their connection")
