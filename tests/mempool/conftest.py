"""MemPool fixtures: the same tests run against the in-process backend and a real redis-server."""

from __future__ import annotations

import socket
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from prometheus_client import CollectorRegistry
from servers import RedisServer, wait_for_port

from eaas.mempool.kv_pool import KVPool
from eaas.mempool.kv_store import MemoryKVStore



class TlsRedisServer(RedisServer):
    """redis-server speaking only TLS, with a throwaway self-signed certificate for 127.0.0.1."""

    def __init__(self):
        super().__init__()
        self.cert = Path(self.dir) / "cert.pem"
        self.key = Path(self.dir) / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-keyout", str(self.key), "-out", str(self.cert), "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.cert}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--port", "0", "--tls-port", str(self.port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(self.cert), "--tls-key-file", str(self.key),
             "--tls-ca-cert-file", str(self.cert), "--tls-auth-clients", "no",
             "--dir", self.dir, "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)


@dataclass
class Backend:
    """Where a test's MemPool lives: url None = in-process, else a real redis-server."""

    name: str
    url: str | None
    server: RedisServer | None
    deployment: str
    metrics_registry: CollectorRegistry

    def kv_pool(self, **kwargs) -> KVPool:
        kwargs.setdefault("fingerprint", "tiny-moe")
        kwargs.setdefault("block_size", 4)
        return KVPool.from_url(self.url, deployment=self.deployment, metrics_registry=self.metrics_registry, **kwargs)

    def metric(self, name: str, **labels) -> float:
        return self.metrics_registry.get_sample_value(name, labels) or 0.0

    def raw(self) -> redis.Redis:
        assert self.server is not None, "raw Redis access only with the redis backend"
        return redis.Redis.from_url(self.server.url)

    def set_value(self, pool: KVPool, key: str, value: bytes) -> None:
        """Overwrite a stored value behind the pool's back (what corruption or a foreign writer does)."""
        if isinstance(pool.store, MemoryKVStore):
            pool.store.values[key] = value
        else:
            self.raw().set(key, value)

    def get_value(self, pool: KVPool, key: str) -> bytes | None:
        if isinstance(pool.store, MemoryKVStore):
            return pool.store.values.get(key)
        return self.raw().get(key)


def _unique_deployment() -> str:
    return f"t{uuid.uuid4().hex[:8]}"  # in-process stores are per deployment and process-wide


@pytest.fixture(params=["memory", "redis"])
def backend(request):
    if request.param == "memory":
        yield Backend("memory", None, None, _unique_deployment(), CollectorRegistry())
        return
    server = request.getfixturevalue("redis_server")
    yield Backend("redis", server.url, server, _unique_deployment(), CollectorRegistry())


@pytest.fixture
def redis_backend(redis_server):
    return Backend("redis", redis_server.url, redis_server, _unique_deployment(), CollectorRegistry())


@pytest.fixture
def auth_redis_server():
    server = RedisServer(password="s3cret-pw")
    server.start()
    yield server
    server.close()


@pytest.fixture
def tls_redis_server():
    server = TlsRedisServer()
    server.start()
    yield server
    server.close()


@pytest.fixture
def silent_server():
    """A TCP port that accepts connections and never answers: a hung Redis."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
