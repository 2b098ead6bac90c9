"""Shared fixtures: real servers on 127.0.0.1 (redis-server), free ports, tiny checkpoints."""

from __future__ import annotations

import pytest
from servers import RedisServer


@pytest.fixture
def redis_server():
    server = RedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server_session():
    server = RedisServer()
    server.start()
    yield server
    server.close()
