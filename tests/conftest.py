"""Shared fixtures: real servers on 127.0.0.1 (redis-server), free ports, tiny checkpoints."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings
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


# Property-based fuzzing (hypothesis): a bounded CI profile; EAAS_FUZZ_PROFILE=long for local hunting.

settings.register_profile("ci", max_examples=1000, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=50_000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("EAAS_FUZZ_PROFILE", "ci"))
