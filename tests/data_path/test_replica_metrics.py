"""eaas_gateway_expert_replicas: the gateway's replicas per group and state, read off real expert servers,
and the expert server's own /metrics names only documented metrics."""

from __future__ import annotations

import urllib.request

import pytest
import torch
from prometheus_client import CollectorRegistry, generate_latest

from eaas.gateway.remote_backend import ExpertsUnavailable, RemoteExpertBackend
from eaas.gateway.replica_metrics import replica_samples
from eaas.model.checkpoint import Checkpoint
from eaas.top.snapshot import parse_metrics
from expert_cluster import ExpertServer, start_servers, tiny_mixtral
from metrics_catalog import documented_metrics

LOW, HIGH = (0, 1, 2, 3), (4, 5, 6, 7)


def replicas(registry: CollectorRegistry) -> dict[tuple[str, str, str], float]:
    snap = parse_metrics(generate_latest(registry).decode(), 0.0)
    return {(lb["group"], lb["experts"], lb["state"]): v for lb, v in snap.samples.get("eaas_gateway_expert_replicas", [])}


def test_replica_samples_report_every_state_of_every_group():
    got = replica_samples([("g0", (0, 1, 2, 3), ["ready", "ready"]), ("g1", (4, 5), ["quarantined", "ready"])])
    assert got == {("g0", "0-3", "ready"): 2, ("g0", "0-3", "quarantined"): 0, ("g0", "0-3", "refused"): 0,
                   ("g0", "0-3", "unverified"): 0, ("g1", "4-5", "ready"): 1, ("g1", "4-5", "quarantined"): 1,
                   ("g1", "4-5", "refused"): 0, ("g1", "4-5", "unverified"): 0}


@pytest.fixture
def servers():
    started = start_servers([ExpertServer(tiny_mixtral(), "0-3"), ExpertServer(tiny_mixtral(), "0-3"),
                             ExpertServer(tiny_mixtral(), "4-7")])
    yield started
    for s in started:
        s.close()


def test_replicas_gauge_follows_the_table_through_a_death_and_a_refusal(servers):
    a0, a1, b0 = servers
    fingerprint = Checkpoint(tiny_mixtral()).fingerprint()
    registry = CollectorRegistry()
    backend = RemoteExpertBackend([(LOW, [a0.address, a1.address]), (HIGH, [b0.address])], fingerprint=fingerprint,
                                  rpc_timeout_s=5, call_timeout_s=10, probe_interval_s=60, registry=registry)
    try:
        got = replicas(registry)
        assert got[("g0", "0-3", "ready")] == 2 and got[("g1", "4-7", "ready")] == 1
        assert sum(v for (_, _, state), v in got.items() if state != "ready") == 0
        b0.kill()
        hidden, ids = torch.randn(4, 64), torch.tensor([[4, 5]] * 4)
        with pytest.raises(ExpertsUnavailable):
            backend.combine(0, hidden, ids, torch.full((4, 2), 0.5))
        got = replicas(registry)
        assert got[("g1", "4-7", "ready")] == 0 and got[("g1", "4-7", "quarantined")] == 1
        assert got[("g0", "0-3", "ready")] == 2
    finally:
        backend.close()
    assert replicas(registry) == {}  # a closed backend is no longer reported

    wrong = CollectorRegistry()
    refused = RemoteExpertBackend([(LOW, [a0.address]), (HIGH, [a1.address])], fingerprint=fingerprint,
                                  registry=wrong)  # a1 holds 0-3, not 4-7: refused
    try:
        got = replicas(wrong)
        assert got[("g0", "0-3", "ready")] == 1 and got[("g1", "4-7", "refused")] == 1
    finally:
        refused.close()

    text = urllib.request.urlopen(f"http://127.0.0.1:{a0.metrics_port}/metrics", timeout=10).read().decode()
    exported = {n for n in parse_metrics(text, 0.0).samples if n.startswith("eaas_")}
    documented = {s for info in documented_metrics().values() for s in info.series()}
    assert exported and exported <= documented, sorted(exported - documented)
