"""RemoteExpertBackend against real expert-server subprocesses: exact results, failover, refusals."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.request

import grpc
import pytest
import torch
from prometheus_client import REGISTRY, generate_latest

from eaas.gateway.remote_backend import ExpertsUnavailable, RemoteExpertBackend
from eaas.gateway.replica_table import GroupSpec
from eaas.model.checkpoint import Checkpoint
from eaas.model.experts import load_expert_weights
from eaas.rpc.slot_transport import SlotTransport, make_transport
from expert_cluster import ExpertServer, start_servers, tiny_mixtral

LOW, HIGH = (0, 1, 2, 3), (4, 5, 6, 7)


def _batch(seed: int, tokens: int = 64):
    """A decode-like batch: top-2 of 8 experts per token, softmax weights, a few empty (-1) slots."""
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 64, generator=gen)
    ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(tokens)])
    ids[::7, 1] = -1
    weights = torch.softmax(torch.randn(tokens, 2, generator=gen), dim=-1)
    return hidden, ids, weights


@pytest.fixture(params=["grpc", "shm"])
def transport(request):
    """Every data-path test runs on both transports; shm is --transport shm (slots required)."""
    return request.param


def _backend(kind: str, groups, **kwargs) -> RemoteExpertBackend:
    backend = RemoteExpertBackend(groups, transport=make_transport(kind), **kwargs)
    if kind == "shm":  # the calls really go through slots, not the gRPC fallback
        assert isinstance(backend.transport, SlotTransport)
        assert all(backend.transport.uses_slots(a) for a, st in backend.replica_states().items() if st == "ready")
    return backend


@pytest.fixture(scope="module")
def local():
    return load_expert_weights(Checkpoint(tiny_mixtral()))


@pytest.fixture(scope="module")
def fingerprint():
    return Checkpoint(tiny_mixtral()).fingerprint()


def _servers(*experts: str) -> list[ExpertServer]:
    return start_servers([ExpertServer(tiny_mixtral(), e) for e in experts])


@pytest.fixture(scope="module")
def cluster():
    """Two groups (experts 0-3 and 4-7) x two replicas, shared by the tests that kill nothing."""
    servers = _servers("0-3", "0-3", "4-7", "4-7")
    yield servers
    for s in servers:
        s.close()


@pytest.fixture
def own_servers():
    """Servers a test may kill; started by the test through the returned function."""
    started: list[ExpertServer] = []

    def start(*experts: str) -> list[ExpertServer]:
        started.extend(_servers(*experts))
        return started[-len(experts):]

    yield start
    for s in started:
        s.close()


def test_remote_combine_over_two_groups_equals_local_combine(transport, cluster, local, fingerprint):
    a0, a1, b0, b1 = (s.address for s in cluster)
    backend = _backend(transport, [(LOW, [a0, a1]), (HIGH, [b0, b1])], fingerprint=fingerprint)
    try:
        assert set(backend.replica_states().values()) == {"ready"}
        for seed, layer in enumerate([0, 1, 2, 1]):
            hidden, ids, weights = _batch(seed)
            assert torch.equal(backend.combine(layer, hidden, ids, weights), local.combine(layer, hidden, ids, weights))
        hidden, ids, weights = _batch(9, tokens=5)
        ids[:] = torch.tensor([1, 2])  # every token in group 0: one RPC, group 1 untouched
        assert torch.equal(backend.combine(1, hidden, ids, weights), local.combine(1, hidden, ids, weights))
        ids[:] = -1
        assert torch.equal(backend.combine(1, hidden, ids, weights), torch.zeros_like(hidden))
    finally:
        backend.close()
    text = generate_latest(REGISTRY).decode()
    assert "eaas_gateway_expert_rpc_seconds_bucket" in text and 'eaas_gateway_tokens_routed_total{expert="7"}' in text


def test_table_update_adds_and_removes_replicas(transport, cluster, local, fingerprint):
    a0, a1, b0, b1 = cluster
    backend = _backend(transport, [GroupSpec(LOW, (a0.address,)), GroupSpec(HIGH, (b0.address,))],
                                  fingerprint=fingerprint)
    try:
        backend.update_table([GroupSpec(LOW, (a0.address, a1.address)), GroupSpec(HIGH, (b1.address,))])
        assert backend.replica_states() == {a0.address: "ready", a1.address: "ready", b1.address: "ready"}
        served_before = _ok_requests(b1)
        for seed in range(4):
            hidden, ids, weights = _batch(seed)
            assert torch.equal(backend.combine(1, hidden, ids, weights), local.combine(1, hidden, ids, weights))
        assert _ok_requests(b1) == served_before + 4
    finally:
        backend.close()


def _ok_requests(server: ExpertServer) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith('eaas_expert_requests_total{code="OK"}')), 0.0)


def test_fingerprint_mismatch_refuses_the_replica(transport, cluster, caplog):
    caplog.set_level(logging.ERROR, logger="eaas.gateway.remote_backend")
    backend = _backend(transport, [(LOW, [cluster[0].address]), (HIGH, [cluster[2].address])],
                                  fingerprint="0123456789abcdef")
    try:
        assert set(backend.replica_states().values()) == {"refused"}
        assert "event=replica_refused" in caplog.text and "reason=fingerprint_mismatch" in caplog.text
        with pytest.raises(ExpertsUnavailable, match="was ever admitted"):
            backend.combine(0, *_batch(0))
    finally:
        backend.close()


def test_replica_death_changes_no_result_and_replica_is_readmitted(transport, own_servers, local, fingerprint):
    a0, a1, b0 = own_servers("0-3", "0-3", "4-7")
    backend = _backend(transport, [(LOW, [a0.address, a1.address]), (HIGH, [b0.address])],
                                  fingerprint=fingerprint, rpc_timeout_s=5, probe_interval_s=0.2)
    try:
        batches = [(seed % 3, *_batch(seed)) for seed in range(12)]
        expected = [local.combine(*b) for b in batches]
        killer = threading.Timer(0.5, a0.kill)
        killer.start()
        deadline, calls = time.monotonic() + 3.0, 0
        while time.monotonic() < deadline or calls < 40:
            i = calls % len(batches)
            assert torch.equal(backend.combine(*batches[i]), expected[i]), f"call {calls}"
            calls += 1
        killer.join()
        assert a0.proc.poll() is not None and backend.replica_states()[a0.address] == "quarantined"
        assert 'eaas_gateway_expert_rpc_failures_total{reason="unavailable"}' in generate_latest(REGISTRY).decode()

        restarted = ExpertServer(tiny_mixtral(), "0-3", port=a0.port)
        own_servers_extra = [restarted.start().wait_ready()]
        deadline = time.monotonic() + 30
        while backend.replica_states()[a0.address] != "ready":
            assert time.monotonic() < deadline, "restarted replica was not re-admitted"
            time.sleep(0.1)
        for i in range(6):
            assert torch.equal(backend.combine(*batches[i]), expected[i])
        assert _ok_requests(restarted) > 0, "the re-admitted replica should take its share again"
    finally:
        backend.close()
        for s in locals().get("own_servers_extra", []):
            s.close()


def test_no_replica_left_raises_unavailable_naming_the_experts(transport, own_servers, local, fingerprint):
    a0, b0 = own_servers("0-3", "4-7")
    backend = _backend(transport, [(LOW, [a0.address]), (HIGH, [b0.address])], fingerprint=fingerprint,
                                  rpc_timeout_s=5, call_timeout_s=10)
    try:
        b0.kill()
        hidden, ids, weights = _batch(2)
        ids[ids >= 4] = -1  # tokens of the surviving group are still served
        assert torch.equal(backend.combine(2, hidden, ids, weights), local.combine(2, hidden, ids, weights))
        for _ in range(2):  # first with the replica still ready, then with it quarantined
            start = time.monotonic()
            with pytest.raises(ExpertsUnavailable) as err:
                backend.combine(2, *_batch(1))
            assert time.monotonic() - start < 5
            assert err.value.code == grpc.StatusCode.UNAVAILABLE
            assert err.value.layer == 2 and err.value.expert_ids == [4, 5, 6, 7]
            assert "layer 2, experts 4-7" in str(err.value)
    finally:
        backend.close()


def _hedges() -> float:
    text = generate_latest(REGISTRY).decode()
    return next((float(line.split()[-1]) for line in text.splitlines()
                 if line.startswith("eaas_gateway_expert_rpc_hedges_total ")), 0.0)


def test_a_stalled_replica_is_hedged_around_and_changes_no_result(transport, own_servers, local, fingerprint):
    """A replica that stops answering (SIGSTOP: alive, socket open) would hold a layer for the whole attempt
    deadline; after a few median round trips the same request also goes to its peer, whose answer is used."""
    a0, a1, b0 = own_servers("0-3", "0-3", "4-7")
    backend = _backend(transport, [(LOW, [a0.address, a1.address]), (HIGH, [b0.address])],
                       fingerprint=fingerprint, rpc_timeout_s=600, call_timeout_s=600)
    try:
        batches = [(seed % 3, *_batch(seed)) for seed in range(12)]
        expected = [local.combine(*b) for b in batches]
        for i in range(12):  # round-trip history for the hedge delay
            assert torch.equal(backend.combine(*batches[i]), expected[i])
        before = _hedges()
        os.kill(a0.proc.pid, signal.SIGSTOP)
        try:
            for i in range(4):  # round robin sends at least one of these to the stalled replica
                assert torch.equal(backend.combine(*batches[i]), expected[i]), f"call {i}"
            assert _hedges() >= before + 1
            assert backend.replica_states()[a1.address] == "ready"
        finally:
            os.kill(a0.proc.pid, signal.SIGCONT)
    finally:
        backend.close()
