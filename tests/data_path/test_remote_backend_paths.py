"""RemoteExpertBackend's request paths through an in-process ExpertTransport: splitting, busy back-off,
rejection, malformed replies, unknown experts. Each address computes with the real expert weights of its
group (the same code an expert server runs) unless the test scripts its next answers."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc

import grpc
import pytest
import torch
from prometheus_client import CollectorRegistry

from eaas.expert_service.combine_request import ServedExperts, decode_combine
from eaas.gateway.remote_backend import ExpertRequestRejected, ExpertsUnavailable, RemoteExpertBackend
from eaas.gateway.replica_table import GroupSpec
from eaas.model.checkpoint import Checkpoint
from eaas.model.experts import load_expert_weights
from eaas.protos import expert_pb2, gateway_pb2
from eaas.rpc.combine_payload import as_request
from eaas.rpc.wire import MAX_MESSAGE_BYTES, encode_tensor
from expert_cluster import tiny_mixtral

LOW, HIGH = (0, 1, 2, 3), (4, 5, 6, 7)


class StatusError(grpc.RpcError):
    """What a gRPC call future raises: a status code and details."""

    def __init__(self, code: grpc.StatusCode, details: str):
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class InProcessTransport:
    """ExpertTransport whose servers are expert weights in this process; `script[address]` queues answers
    (a grpc.StatusCode or a CombineResponse) that take the place of the next computed ones."""

    def __init__(self, groups: dict[str, tuple[int, ...]], max_message_bytes: int = MAX_MESSAGE_BYTES):
        ckpt = Checkpoint(tiny_mixtral())
        self.weights = {e: load_expert_weights(ckpt, list(e)) for e in set(groups.values())}
        self.groups = groups
        self.max_message_bytes = max_message_bytes
        self.fingerprint = ckpt.fingerprint()
        self.script: dict[str, list] = {a: [] for a in groups}
        self.sent: list[tuple[str, expert_pb2.CombineRequest]] = []
        self.unhealthy: set[str] = set()

    def served(self, address: str) -> ServedExperts:
        w = self.weights[self.groups[address]]
        return ServedExperts(frozenset(w.layers), frozenset(self.groups[address]), w.num_experts, w.hidden_size,
                             "float32", self.max_message_bytes)

    def combine(self, address, request, timeout):
        request = as_request(request)  # the backend hands over a CombinePayload; gRPC would send this message
        self.sent.append((address, request))
        future = concurrent.futures.Future()
        answer = self.script[address].pop(0) if self.script[address] else None
        if isinstance(answer, grpc.StatusCode):
            future.set_exception(StatusError(answer, f"scripted {answer.name}"))
        elif answer is not None:
            future.set_result(answer)
        else:
            job = decode_combine(request, self.served(address))  # what the server checks, so a bad request fails
            out = self.weights[self.groups[address]].combine(job.layer, job.hidden, job.expert_ids, job.weights)
            future.set_result(expert_pb2.CombineResponse(output=encode_tensor(out)))
        return future

    def info(self, address, timeout):
        w = self.weights[self.groups[address]]
        return expert_pb2.ServerInfo(model_fingerprint=self.fingerprint, layers=sorted(w.layers),
                                     expert_ids=self.groups[address], dtype="float32", hidden_size=w.hidden_size,
                                     num_experts=w.num_experts, max_message_bytes=self.max_message_bytes)

    def serving(self, address, timeout):
        return address not in self.unhealthy

    def close(self, address=None):
        pass


def backend_over(transport: InProcessTransport) -> RemoteExpertBackend:
    by_experts: dict[tuple[int, ...], list[str]] = {}
    for address, experts in transport.groups.items():
        by_experts.setdefault(experts, []).append(address)
    return RemoteExpertBackend([GroupSpec(e, tuple(a)) for e, a in by_experts.items()],
                               fingerprint=transport.fingerprint, call_timeout_s=10.0, probe_interval_s=3600,
                               transport=transport, registry=CollectorRegistry())


def _batch(seed: int, tokens: int = 64, experts: int = 8):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 64, generator=gen)
    ids = torch.stack([torch.randperm(experts, generator=gen)[:2] for _ in range(tokens)])
    ids[::7, 1] = -1
    return hidden, ids, torch.softmax(torch.randn(tokens, 2, generator=gen), dim=-1)


@pytest.fixture(scope="module")
def local():
    return load_expert_weights(Checkpoint(tiny_mixtral()))


def test_each_group_gets_only_its_rows_and_the_sum_is_exact(local):
    transport = InProcessTransport({"a": LOW, "b": HIGH})
    backend = backend_over(transport)
    try:
        hidden, ids, weights = _batch(0)
        assert torch.equal(backend.combine(1, hidden, ids, weights), local.combine(1, hidden, ids, weights))
        for address, request in transport.sent:
            sent_ids = torch.frombuffer(bytearray(request.expert_ids.data), dtype=torch.int32)
            assert set(sent_ids.tolist()) <= set(transport.groups[address]) | {-1}
        low_rows = int(((ids >= 0) & (ids < 4)).any(dim=1).sum())
        assert [list(r.hidden.shape) for a, r in transport.sent if a == "a"] == [[low_rows, 64]]

        transport.sent.clear()  # a batch that routes to one group sends one request
        low_only = torch.where(ids >= 4, ids - 4, ids)
        assert torch.equal(backend.combine(1, hidden, low_only, weights), local.combine(1, hidden, low_only, weights))
        assert [a for a, _ in transport.sent] == ["a"]
    finally:
        backend.close()


def test_a_batch_over_the_message_limit_is_split_into_requests_that_fit(local):
    row_bytes = 64 * 4 + 2 * 4 + 2 * 4  # hidden + ids + weights of one row, fp32
    transport = InProcessTransport({"a": LOW, "b": HIGH}, max_message_bytes=4096 + 10 * row_bytes)
    backend = backend_over(transport)
    try:
        hidden, ids, weights = _batch(1, tokens=64)
        out = backend.combine(2, hidden, ids, weights)
        assert torch.allclose(out, local.combine(2, hidden, ids, weights), rtol=1e-5, atol=1e-6)
        sizes = [r.hidden.shape[0] for _, r in transport.sent]
        assert max(sizes) == 10 and len(sizes) > 2
        assert all(r.ByteSize() <= transport.max_message_bytes for _, r in transport.sent)
    finally:
        backend.close()


def test_busy_replicas_are_retried_after_a_back_off_without_quarantine(local):
    transport = InProcessTransport({"a": LOW, "b": HIGH})
    transport.script["a"] = [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
    backend = backend_over(transport)
    try:
        hidden, ids, weights = _batch(2)
        assert torch.equal(backend.combine(0, hidden, ids, weights), local.combine(0, hidden, ids, weights))
        assert [a for a, _ in transport.sent].count("a") == 4  # three busy answers, then the result
        assert backend.replica_states() == {"a": "ready", "b": "ready"}
        assert backend.metrics.failures.labels("resource_exhausted")._value.get() == 3
    finally:
        backend.close()


def test_a_rejected_request_fails_at_once_and_is_sent_nowhere_else():
    transport = InProcessTransport({"a1": LOW, "a2": LOW, "b": HIGH})
    transport.script["a1"] = [grpc.StatusCode.INVALID_ARGUMENT]
    transport.script["a2"] = [grpc.StatusCode.INVALID_ARGUMENT]
    backend = backend_over(transport)
    try:
        hidden, ids, weights = _batch(3)
        low_only = torch.where(ids >= 4, ids - 4, ids)
        with pytest.raises(ExpertRequestRejected, match="INVALID_ARGUMENT: layer 1"):
            backend.combine(1, hidden, low_only, weights)
        assert len(transport.sent) == 1
        assert set(backend.replica_states().values()) == {"ready"}
    finally:
        backend.close()


@pytest.mark.parametrize("malformed", [
    expert_pb2.CombineResponse(output=encode_tensor(torch.zeros(3, 64))),                    # wrong row count
    expert_pb2.CombineResponse(output=encode_tensor(torch.zeros(1, dtype=torch.int32))),      # wrong dtype
    expert_pb2.CombineResponse(output=expert_pb2.Tensor(data=b"\0" * 7, dtype="float32", shape=[2])),  # short data
])
def test_a_malformed_reply_quarantines_the_replica_and_another_answers(local, malformed):
    transport = InProcessTransport({"a1": LOW, "a2": LOW, "b": HIGH})
    backend = backend_over(transport)
    transport.unhealthy.add("a1")  # so the prober keeps it out once quarantined
    transport.script["a1"] = [malformed]
    try:
        hidden, ids, weights = _batch(4)
        low_only = torch.where(ids >= 4, ids - 4, ids)
        expected = local.combine(1, hidden, low_only, weights)
        assert torch.equal(backend.combine(1, hidden, low_only, weights), expected)  # a1 (first of a tie), then a2
        assert torch.equal(backend.combine(1, hidden, low_only, weights), expected)  # a1 is out of rotation
        assert [a for a, _ in transport.sent] == ["a1", "a2", "a2"]
        assert backend.replica_states()["a1"] == "quarantined"
        assert backend.metrics.failures.labels("internal")._value.get() == 1
    finally:
        backend.close()


def test_experts_no_group_holds_raise_unavailable_before_any_request():
    transport = InProcessTransport({"a": LOW})
    backend = backend_over(transport)
    try:
        hidden, ids, weights = _batch(5)
        with pytest.raises(ExpertsUnavailable, match=r"layer 0, experts 4-7: no expert group holds them"):
            backend.combine(0, hidden, ids, weights)
        assert transport.sent == []
    finally:
        backend.close()


def test_a_quarantined_replica_is_tried_when_no_ready_one_is_left(local):
    transport = InProcessTransport({"a": LOW, "b": HIGH})
    backend = backend_over(transport)
    transport.unhealthy.add("a")
    transport.script["a"] = [grpc.StatusCode.UNAVAILABLE]
    try:
        hidden, ids, weights = _batch(6)
        low_only = torch.where(ids >= 4, ids - 4, ids)
        expected = local.combine(1, hidden, low_only, weights)
        with pytest.raises(ExpertsUnavailable, match="UNAVAILABLE from a"):
            backend.combine(1, hidden, low_only, weights)
        assert backend.replica_states()["a"] == "quarantined"
        assert torch.equal(backend.combine(1, hidden, low_only, weights), expected)  # last resort: it answers
    finally:
        backend.close()


def test_each_registry_shows_its_own_backends_counts_when_registries_come_and_go():
    """Registries made and dropped one after another (CPython hands a freed object's address, its id(), to
    the next one at once): each must still show the tokens its own backend routed."""
    transport = InProcessTransport({"a": LOW})
    for seed in range(20):
        registry = CollectorRegistry()
        backend = RemoteExpertBackend([GroupSpec(LOW, ("a",))], fingerprint=transport.fingerprint,
                                      probe_interval_s=3600, transport=transport, registry=registry)
        hidden, ids, weights = _batch(seed, experts=4)
        backend.combine(0, hidden, ids, weights)
        backend.close()
        assert registry.get_sample_value("eaas_gateway_tokens_routed_total", {"expert": "0"}) == (ids == 0).sum()
        del registry, backend
        gc.collect()


def test_gateway_info_follows_the_live_replica_table():
    from eaas.gateway.server import Gateway, GatewayOptions

    transport = InProcessTransport({"a": LOW, "b": HIGH, "all": LOW + HIGH})
    gateway = Gateway(GatewayOptions(model=str(tiny_mixtral())))
    gateway.backend = RemoteExpertBackend([GroupSpec(LOW, ("a",)), GroupSpec(HIGH, ("b",))],
                                          fingerprint=transport.fingerprint, probe_interval_s=3600,
                                          transport=transport, registry=CollectorRegistry())
    try:
        servicer = gateway.grpc_servicer()
        assert list(asyncio.run(servicer.Info(gateway_pb2.GatewayInfoRequest(), None)).expert_groups) == ["g0=0-3", "g1=4-7"]
        gateway.backend.update_table([GroupSpec(LOW + HIGH, ("all",), "whole")])
        assert list(asyncio.run(servicer.Info(gateway_pb2.GatewayInfoRequest(), None)).expert_groups) == ["whole=0-7"]
    finally:
        gateway.backend.close()
