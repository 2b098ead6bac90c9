"""A gateway started with an API key, driven as a careless user or an attacker would: no key, a wrong
key, the right key — over HTTP (aiohttp) and gRPC (the SDK), against real servers on 127.0.0.1."""

from __future__ import annotations

import grpc
import pytest
from gateway_grpc import grpc_gateway
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eaas.client import AsyncClient, GenerationError
from eaas.engine.sequence import SamplingParams

pytestmark = pytest.mark.asyncio

KEY = "sk-eaas-test-key"
PROMPT_IDS = [72, 101, 108, 108, 111]
BODY = {"prompt": PROMPT_IDS, "max_tokens": 4, "temperature": 0}


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                                     {"Authorization": f"Basic {KEY}"}])
async def test_http_without_the_key_is_401_in_openai_shape(serve, service, headers):
    async with serve(service, api_key=KEY) as client:
        for method, path in (("POST", "/v1/completions"), ("POST", "/v1/chat/completions"), ("GET", "/v1/models")):
            resp = await client.request(method, path, json=BODY, headers=headers)
            assert resp.status == 401, await resp.text()
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
            error = (await resp.json())["error"]
            assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
            assert "API key" in error["message"]


async def test_http_with_the_key_generates_and_probes_stay_open(serve, service, reference_engine):
    expected = reference_engine.generate([PROMPT_IDS], SamplingParams(max_tokens=4, temperature=0.0))[0]
    async with serve(service, api_key=KEY) as client:
        resp = await client.post("/v1/completions", json=BODY, headers={"Authorization": f"Bearer {KEY}"})
        assert resp.status == 200, await resp.text()
        assert (await resp.json())["choices"][0]["token_ids"] == expected
        for path in ("/health", "/metrics"):  # kubelet probes and Prometheus carry no key
            assert (await client.get(path)).status == 200


@pytest.mark.parametrize("api_key", [None, "wrong", KEY + "x", KEY[:-1]])
async def test_grpc_without_the_right_key_is_unauthenticated(service, api_key, monkeypatch):
    monkeypatch.delenv("EAAS_API_KEY", raising=False)
    async with grpc_gateway(service, KEY) as address, AsyncClient([address], timeout=30, api_key=api_key) as c:
        with pytest.raises(GenerationError) as err:
            await c.generate(prompt_ids=PROMPT_IDS, max_tokens=4)
        assert err.value.code == grpc.StatusCode.UNAUTHENTICATED  # not retried: a wrong key stays wrong
        with pytest.raises(grpc.aio.AioRpcError) as info_err:
            await c.info()
        assert info_err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert service.busy == 0  # refused before the engine saw it


async def test_grpc_with_the_key_generates_and_health_stays_open(service, reference_engine, monkeypatch):
    monkeypatch.delenv("EAAS_API_KEY", raising=False)
    expected = reference_engine.generate([PROMPT_IDS], SamplingParams(max_tokens=4, temperature=0.0))[0]
    async with grpc_gateway(service, KEY) as address:
        async with AsyncClient([address], timeout=60, api_key=KEY) as c:
            assert (await c.generate(prompt_ids=PROMPT_IDS, max_tokens=4)).token_ids == expected
            assert (await c.info()).model_name == "tiny-mixtral"
        monkeypatch.setenv("EAAS_API_KEY", KEY)  # the SDK's default, as `eaas up --api-key` sets it
        async with AsyncClient([address], timeout=60) as c:
            assert (await c.generate(prompt_ids=PROMPT_IDS, max_tokens=4)).token_ids == expected
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
