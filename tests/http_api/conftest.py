"""The OpenAI HTTP app on 127.0.0.1 over real EngineServices (monolithic engine, tiny Mixtral checkpoint)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web

from eaas.engine.factory import load_tokenizer, monolithic_engine
from eaas.gateway.engine_service import EngineService
from eaas.gateway.openai_http import build_http_app
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S
from eaas.model.tiny import write_tiny_model

SERVED_MODEL = "tiny-mixtral"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return write_tiny_model(tmp_path_factory.mktemp("http-mixtral"), "mixtral", seed=3)


@pytest.fixture(scope="session")
def reference_engine(tiny_model_dir):
    """A second engine on the same checkpoint, run directly: what the HTTP API must reproduce."""
    return monolithic_engine(tiny_model_dir)


@pytest.fixture(scope="session")
def hf_model(tiny_model_dir):
    """transformers' own model of the same checkpoint: the oracle of logits and logprobs."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def service(tiny_model_dir):
    svc = EngineService(monolithic_engine(tiny_model_dir), load_tokenizer(tiny_model_dir))
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def tokenizerless_service(tiny_model_dir):
    svc = EngineService(monolithic_engine(tiny_model_dir), tokenizer=None)
    svc.start()
    yield svc
    svc.stop()


@pytest.fixture
def model_name() -> str:
    return SERVED_MODEL


@contextlib.asynccontextmanager
async def serving_url(service: EngineService, handler_cancellation: bool = False, api_key: str | None = None,
                      stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S):
    """The app on a free port of 127.0.0.1, served like the gateway serves it (web.AppRunner): its base URL."""
    runner = web.AppRunner(build_http_app(service, SERVED_MODEL, api_key, stall_timeout_s),
                           handler_cancellation=handler_cancellation)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()
    # Every request of the test must be gone from the engine before its event loop closes: the engine
    # thread posts tokens to the loop of each live request.
    deadline = time.monotonic() + 10
    while service.busy and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert service.busy == 0, "a request outlived its test"


@contextlib.asynccontextmanager
async def serving(service: EngineService, handler_cancellation: bool = False, api_key: str | None = None,
                  stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S):
    """A client session of the app on a free port of 127.0.0.1."""
    async with serving_url(service, handler_cancellation, api_key, stall_timeout_s) as url:
        async with aiohttp.ClientSession(base_url=url) as session:
            yield session


@pytest.fixture
def serve():
    """serving() for a test that builds its own service."""
    return serving


@pytest_asyncio.fixture
async def client(service):
    async with serving(service) as session:
        yield session


@pytest_asyncio.fixture
async def base_url(service):
    """The app's base URL on a free port, for a client that makes its own sessions."""
    async with serving_url(service) as url:
        yield url


@pytest_asyncio.fixture
async def cancelling_client(service):
    """Like `client`, but aiohttp cancels a handler whose client disconnects (aiohttp's test servers do)."""
    async with serving(service, handler_cancellation=True) as session:
        yield session


@pytest_asyncio.fixture
async def tokenizerless_client(tokenizerless_service):
    async with serving(tokenizerless_service) as session:
        yield session


@pytest_asyncio.fixture
async def openai_client(service):
    """The official `openai` client of the app (what users and evaluation harnesses call it with)."""
    import openai

    async with serving_url(service) as url:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        try:
            yield client
        finally:
            await client.close()
