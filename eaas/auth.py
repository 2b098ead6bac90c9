"""API keys: where a process finds its key, and whether a request's `Authorization` header carries it.

Pure decisions, shared by the gateway's HTTP middleware and gRPC interceptor and by the clients, and
`ApiKeyFile`: a key from a file (a mounted Secret) that follows the file when it is replaced.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from eaas.errors import UserError
from eaas.file_signature import stat_signature

log = logging.getLogger("eaas.auth")

API_KEY_ENV = "EAAS_API_KEY"
# reachable without a key: probes (kubelet, load balancers) and Prometheus carry none
OPEN_HTTP_PATHS = frozenset({"/health", "/metrics"})
OPEN_GRPC_METHODS = frozenset({"/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch"})


def resolve_api_key(flag: str | None = None, file: str | None = None, env: dict | None = None) -> str | None:
    """The key from --api-key, else --api-key-file, else $EAAS_API_KEY; None: no authentication."""
    env = os.environ if env is None else env
    if flag is not None and file is not None:
        raise UserError("give --api-key or --api-key-file, not both")
    if file is not None:
        return _read_key_file(Path(file))
    key = flag if flag is not None else env.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise UserError("the API key is empty (--api-key or $EAAS_API_KEY)")
    return key.strip() if key is not None else None


def bearer(key: str) -> str:
    """The Authorization header value a client sends."""
    return f"Bearer {key}"


def authorized(header: str | None, key: str) -> bool:
    """Does `Authorization: <header>` carry `key`? Constant time in the key's content."""
    if not header:
        return False
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(token.strip().encode("utf-8", "surrogatepass"), key.encode("utf-8"))


def _read_key_file(path: Path) -> str:
    try:
        key = path.read_text().strip()
    except OSError as exc:
        raise UserError(f"cannot read --api-key-file {path}: {exc.strerror}") from None
    if not key:
        raise UserError(f"--api-key-file {path} is empty")
    return key


class ApiKeyFile:
    """The key in a file, re-read when the file's stat changes (a Secret rotated by the kubelet's `..data`
    swap, or a file rewritten in place): `current()` costs one stat. A file that is empty or unreadable
    mid-rotation keeps the previous key (logged), so a half-done swap never locks every client out."""

    def __init__(self, path: str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._seen = stat_signature([self.path])
        self._key = _read_key_file(self.path)  # a bad file at start: a one-line error, no serving

    def current(self) -> str:
        signature = stat_signature([self.path])
        with self._lock:
            if signature != self._seen:
                self._seen = signature
                try:
                    fresh = _read_key_file(self.path)
                except UserError as exc:
                    log.warning("API key file changed but does not load (%s); keeping the previous key", exc)
                    return self._key
                if fresh != self._key:
                    log.info("API key file re-read: a new key is in force (%s)", self.path)
                    self._key = fresh
            return self._key


def api_key_source(flag: str | None = None, file: str | None = None,
                   env: dict | None = None) -> str | ApiKeyFile | None:
    """What the gateway checks requests against: an ApiKeyFile for --api-key-file (followed when it
    changes), else the fixed key of resolve_api_key, else None (no authentication)."""
    if file is not None and flag is None:
        return ApiKeyFile(file)
    return resolve_api_key(flag, file, env)


def key_getter(source: str | ApiKeyFile) -> Callable[[], str]:
    """A function returning the key in force now, for a fixed key or a file."""
    return source.current if isinstance(source, ApiKeyFile) else (lambda: source)
