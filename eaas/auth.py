"""API keys: where a process finds its key, and whether a request's `Authorization` header carries it.

Pure decisions, shared by the gateway's HTTP middleware and gRPC interceptor and by the clients.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from eaas.errors import UserError

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
        try:
            key = Path(file).read_text().strip()
        except OSError as exc:
            raise UserError(f"cannot read --api-key-file {file}: {exc.strerror}") from None
        if not key:
            raise UserError(f"--api-key-file {file} is empty")
        return key
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
