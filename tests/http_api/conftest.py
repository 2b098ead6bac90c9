"""The OpenAI HTTP app on 127.0.0.1 over real EngineServices (monolithic engine, tiny Mixtral checkpoint)."""

from __future__ import annotations

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient, TestServer

from eaas.engine.factory import load_tokenizer, monolithic_engine
from eaas.gateway.engine_service import EngineService
from eaas.gateway.openai_http import build_http_app
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


@pytest_asyncio.fixture
async def client(service):
    async with TestClient(TestServer(build_http_app(service, SERVED_MODEL), host="127.0.0.1")) as c:
        yield c


@pytest_asyncio.fixture
async def tokenizerless_client(tokenizerless_service):
    async with TestClient(TestServer(build_http_app(tokenizerless_service, SERVED_MODEL), host="127.0.0.1")) as c:
        yield c
