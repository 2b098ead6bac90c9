"""The shared-memory data path on its own: slot generations, fallback to gRPC, errors as gRPC reports them."""

from __future__ import annotations

import signal
import time

import grpc
import pytest
import torch

from eaas.protos import expert_pb2
from eaas.rpc.slot_transport import SlotTransport, TransportError
from eaas.rpc.transport import GrpcTransport
from eaas.rpc.wire import FLOAT_DTYPES, decode_tensor, encode_tensor
from expert_cluster import ExpertServer, start_servers, tiny_mixtral


def _request(seed: int, layer: int = 1, tokens: int = 16) -> tuple[expert_pb2.CombineRequest, tuple]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 64, generator=gen)
    ids = torch.randint(0, 4, (tokens, 2), generator=gen, dtype=torch.int32)
    weights = torch.rand(tokens, 2, generator=gen)
    request = expert_pb2.CombineRequest(layer=layer, hidden=encode_tensor(hidden), expert_ids=encode_tensor(ids),
                                        weights=encode_tensor(weights))
    return request, (layer, hidden, ids, weights)  # the request and local.combine's arguments


def _output(future) -> torch.Tensor:
    return decode_tensor(future.result().output, "output", ("float32",))


@pytest.fixture
def servers():
    started: list[ExpertServer] = []

    def start(*args: str) -> list[ExpertServer]:
        started.extend(start_servers([ExpertServer(tiny_mixtral(), "0-3", *args)]))
        return started[-1]
    yield start
    for s in started:
        s.close()


def _grpc_answer(address: str, request) -> torch.Tensor:
    """What the same server answers over gRPC: the slot path must give these exact bits."""
    plain = GrpcTransport()
    try:
        return _output(plain.combine(address, request, 10))
    finally:
        plain.close()


def test_late_reply_of_a_stopped_server_is_never_read_as_a_later_call(servers):
    server = servers()
    transport = SlotTransport(required=True, slots=1)  # one slot: the late call and the next share it
    try:
        transport.info(server.address, 10)
        request, _ = _request(0)
        assert torch.equal(_output(transport.combine(server.address, request, 10)),
                           _grpc_answer(server.address, request))
        server.proc.send_signal(signal.SIGSTOP)
        late = transport.combine(server.address, _request(1)[0], 0.3)
        with pytest.raises(TransportError) as err:
            late.result(timeout=10)
        assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        # the only slot is still reserved for the late call: this one goes over gRPC, not into its slot
        assert not transport._links[server.address]._free
        server.proc.send_signal(signal.SIGCONT)
        link = transport._links[server.address]
        deadline = time.monotonic() + 30
        while not link._free:  # the late reply arrives, is dropped, and frees the slot
            assert time.monotonic() < deadline, "the late reply never freed its slot"
            time.sleep(0.05)
        for seed in range(2, 6):
            request, _ = _request(seed)
            assert torch.equal(_output(transport.combine(server.address, request, 10)),
                               _grpc_answer(server.address, request))
        assert link.alive and link._free == [0]
    finally:
        server.proc.send_signal(signal.SIGCONT)
        transport.close()


def test_auto_serves_a_grpc_only_server_over_grpc_and_shm_refuses_it(servers):
    server = servers("--transport", "grpc")
    auto = SlotTransport(required=False)
    try:
        assert auto.info(server.address, 10).shm_endpoint == ""
        assert not auto.uses_slots(server.address)
        request, _ = _request(0)
        assert torch.equal(_output(auto.combine(server.address, request, 10)), _grpc_answer(server.address, request))
    finally:
        auto.close()
    required = SlotTransport(required=True)
    try:
        with pytest.raises(TransportError) as err:
            required.info(server.address, 10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "--transport shm" in err.value.details()
    finally:
        required.close()


def test_a_bad_request_gets_the_same_error_on_both_transports(servers):
    server = servers()
    slots, plain = SlotTransport(required=True), GrpcTransport()
    try:
        slots.info(server.address, 10)
        for layer, ids, weights, problem in [
                (7, [[0, 1]], None, "layer 7 is not served here"),
                (1, [[0, 6]], None, "experts 6 are not held by this server"),
                (1, [[0, 1]], [[float("nan"), 0.5]], "NaN or infinite routing weights")]:
            request, _ = _request(0, layer=layer, tokens=1)
            request.expert_ids.CopyFrom(encode_tensor(torch.tensor(ids, dtype=torch.int32)))
            if weights is not None:
                dtype = decode_tensor(request.weights, "weights", FLOAT_DTYPES).dtype
                request.weights.CopyFrom(encode_tensor(torch.tensor(weights, dtype=dtype)))
            errors = []
            for transport in (slots, plain):
                with pytest.raises(grpc.RpcError) as err:
                    transport.combine(server.address, request, 10).result(timeout=10)
                errors.append((err.value.code(), err.value.details()))
            assert errors[0] == errors[1] and errors[0][0] == grpc.StatusCode.INVALID_ARGUMENT
            assert problem in errors[0][1]
        assert slots.uses_slots(server.address)  # a refused request does not cost the link
    finally:
        slots.close()
        plain.close()
