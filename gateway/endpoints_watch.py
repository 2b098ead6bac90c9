"""Watches the v1 Endpoints of one namespace through the Kubernetes API (list, then watch from that
resourceVersion; relist on 410 Gone or a dropped stream) and keeps the table the gateway's discovery reads.

Why not DNS: a headless Service's DNS answer is cached and polled, so a new replica is found late and a
deleted one keeps receiving RPCs; an Endpoints watch delivers both within one API round trip, and it is
readiness-aware (`addresses` vs `notReadyAddresses`). Credentials: in-cluster (the gateway's
ServiceAccount, which the operator grants get/list/watch on endpoints) or a kubeconfig.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from eaas.gateway.discovery import apply_endpoints_event

log = logging.getLogger("eaas.gateway.endpoints")
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
WATCH_TIMEOUT_S = 240  # the API server closes a watch after this; we then resume from the last version
RETRY_S = 1.0
MAX_RETRY_S = 30.0


@dataclass(frozen=True)
class ApiAccess:
    server: str
    ssl_context: ssl.SSLContext | bool
    static_token: str | None = None
    token_file: Path | None = None  # in-cluster: re-read per request (the kubelet rotates it)

    def headers(self) -> dict[str, str]:
        token = self.token_file.read_text().strip() if self.token_file else self.static_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    @classmethod
    def discover(cls, kubeconfig: str | None = None) -> ApiAccess:
        """In-cluster credentials when running in a Pod, else $KUBECONFIG / ~/.kube/config (or `kubeconfig`)."""
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if not kubeconfig and host and port and (SERVICE_ACCOUNT / "token").is_file():
            host = f"[{host}]" if ":" in host else host
            return cls(server=f"https://{host}:{port}", token_file=SERVICE_ACCOUNT / "token",
                       ssl_context=ssl.create_default_context(cafile=str(SERVICE_ACCOUNT / "ca.crt")))
        import kubernetes

        config = kubernetes.client.Configuration()
        kubernetes.config.load_kube_config(config_file=kubeconfig, client_configuration=config)
        token = (config.api_key or {}).get("authorization") or (config.api_key or {}).get("BearerToken")
        if token and token.lower().startswith("bearer "):
            token = token[len("bearer "):]
        context: ssl.SSLContext | bool = False
        if config.verify_ssl:
            context = ssl.create_default_context(cafile=config.ssl_ca_cert)
            if config.cert_file:
                context.load_cert_chain(config.cert_file, config.key_file)
        return cls(server=config.host.rstrip("/"), static_token=token, ssl_context=context)


def pod_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT / "namespace").read_text().strip()
    except OSError:
        return "default"


class EndpointsWatch:
    """`table`: Endpoints objects by name; `changed` is set after every change (the gateway clears it)."""

    def __init__(self, access: ApiAccess, namespace: str):
        self.access = access
        self.namespace = namespace
        self.table: dict[str, dict] = {}
        self.changed = asyncio.Event()
        self.synced = asyncio.Event()  # set after the first complete list

    @property
    def _url(self) -> str:
        return f"{self.access.server}/api/v1/namespaces/{self.namespace}/endpoints"

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=WATCH_TIMEOUT_S + 30)
        delay = RETRY_S
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    version = await self._list(session)
                    delay = RETRY_S
                    while version:
                        version = await self._watch(session, version)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # API restarts, network, RBAC: keep the table, relist with back-off
                    log.warning("endpoints watch in %s interrupted (%s); relisting in %.0f s",
                                self.namespace, exc, delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_S)
                    continue
                await asyncio.sleep(RETRY_S)

    async def _list(self, session: aiohttp.ClientSession) -> str:
        async with session.get(self._url, ssl=self.access.ssl_context, headers=self.access.headers()) as answer:
            answer.raise_for_status()
            listing = await answer.json()
        self.table = {item["metadata"]["name"]: item for item in listing.get("items") or []}
        self.changed.set()
        self.synced.set()
        return listing["metadata"]["resourceVersion"]

    async def _watch(self, session: aiohttp.ClientSession, version: str) -> str | None:
        """Apply events until the stream ends; the version to resume from, or None to relist (410 Gone)."""
        params = {"watch": "1", "resourceVersion": version, "allowWatchBookmarks": "true",
                  "timeoutSeconds": str(WATCH_TIMEOUT_S)}
        async with session.get(self._url, params=params, ssl=self.access.ssl_context,
                               headers=self.access.headers()) as answer:
            answer.raise_for_status()
            async for line in answer.content:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind, obj = event["type"], event["object"]
                if kind == "ERROR":
                    log.info("endpoints watch: %s; relisting", obj.get("message"))
                    return None
                version = obj["metadata"].get("resourceVersion", version)
                if kind == "BOOKMARK":
                    continue
                self.table = apply_endpoints_event(self.table, kind, obj)
                self.changed.set()
        return version
