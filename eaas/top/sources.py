"""Where `eaas top` reads from (the I/O): gateways' /metrics over HTTP, a deployment's Redis."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from eaas.errors import UserError
from eaas.mempool.keys import LOAD_BUCKET_S, DeploymentKeys, complete_load_buckets
from eaas.mempool.load_stats import load_rates
from eaas.mempool.registry import ReplicaInfo
from eaas.top.snapshot import Snapshot, merged, parse_metrics
from eaas.top.view import RedisFacts


def metrics_url(gateway: str) -> str:
    """'http://host:8000' or 'host:8000' (the gateway's HTTP port) -> its /metrics URL."""
    base = gateway if "://" in gateway else f"http://{gateway}"
    base = base.rstrip("/")
    for suffix in ("/metrics", "/v1"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base + "/metrics"


def read_gateways(gateways: list[str], api_key: str | None = None, timeout_s: float = 5.0) -> Snapshot:
    """One reading of every gateway, merged; a gateway that does not answer is a UserError naming it."""
    snaps = []
    for gateway in gateways:
        url = metrics_url(gateway)
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                text = response.read().decode("utf-8")
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"cannot read {url}: {getattr(exc, 'reason', exc)}") from None
        try:
            snaps.append(parse_metrics(text, time.monotonic()))
        except ValueError as exc:
            raise UserError(f"{url} did not answer Prometheus text: {exc}") from None
    return merged(snaps)


def read_redis(client, deployment: str, windows: int, now: float | None = None) -> RedisFacts:
    """Per-expert tokens/s over the last `windows` complete 10 s windows and the registered replicas per
    group (raises redis errors)."""
    keys = DeploymentKeys(deployment)
    buckets = complete_load_buckets(time.time() if now is None else now, windows)
    pipe = client.pipeline(transaction=False)
    for bucket in buckets:
        pipe.hgetall(keys.load(bucket))
    hashes = [{int(e): int(n) for e, n in h.items()} for h in pipe.execute()]
    replicas: dict[str, tuple[tuple[int, ...], int]] = {}
    names = list(client.scan_iter(match=keys.registry_pattern, count=1000))
    for raw in client.mget(names) if names else []:
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            info = ReplicaInfo.from_json(raw)
        except (ValueError, KeyError, TypeError):
            continue
        experts, count = replicas.get(info.group, (info.experts, 0))
        replicas[info.group] = (experts, count + 1)
    return RedisFacts(load_rates(hashes, windows), float(LOAD_BUCKET_S * windows), replicas)
