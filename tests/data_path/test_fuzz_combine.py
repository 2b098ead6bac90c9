"""Hostile Combine requests (hypothesis): any dtype, shape, byte length, expert id, NaN/Inf or huge dimension
is either served or refused with a WireError (INVALID_ARGUMENT on the wire) — never another exception, never
a hang — and the server still computes exact results afterwards."""

from __future__ import annotations

import math

import grpc
import pytest
import torch
from expert_cluster import ExpertServer, tiny_mixtral
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eaas.protos import expert_pb2, expert_pb2_grpc
from eaas.rpc.wire import MAX_MESSAGE_BYTES, WireError, decode_tensor, encode_tensor
from eaas.expert_service.combine_request import ServedExperts, decode_combine

SERVED = ServedExperts(layers=frozenset({0, 1, 2}), expert_ids=frozenset({0, 1, 2, 3}), num_experts=8,
                       hidden_size=64, dtype="float32", max_message_bytes=MAX_MESSAGE_BYTES)
DTYPES = ["float32", "bfloat16", "float16", "int32", "", "float64", "int8", "uint8", "FLOAT32", "float32\x00", "é"]
ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2, "int32": 4}
# dimensions: mostly small and plausible, sometimes zero, negative-looking or astronomically large
DIMS = st.one_of(st.integers(0, 8), st.sampled_from([64, 63, 65, 2**31, 2**40, 2**62, 2**63 - 1]))
SHAPES = st.lists(DIMS, min_size=0, max_size=6) | st.lists(st.integers(0, 1), min_size=60, max_size=80)


@st.composite
def tensors(draw, plausible_dtype: str):
    dtype = draw(st.sampled_from([plausible_dtype] * 4 + DTYPES))
    shape = draw(SHAPES)
    if dtype in ITEMSIZE and draw(st.booleans()):  # matching byte length: gets past the size check
        n = math.prod(shape) * ITEMSIZE[dtype]
        if n > 1 << 16:
            shape, n = [1, 64], 64 * ITEMSIZE[dtype]
        data = draw(st.binary(min_size=n, max_size=n))
    else:
        data = draw(st.binary(max_size=300))
    return expert_pb2.Tensor(data=data, dtype=dtype, shape=shape)


def _special(dtype: torch.dtype, t: int, k: int, what: str) -> torch.Tensor:
    return torch.full((t, k), {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}[what], dtype=dtype)


@st.composite
def combine_requests(draw):
    layer = draw(st.integers(0, 5) | st.integers(0, 2**32 - 1))
    if draw(st.integers(0, 3)) == 0:  # a well-formed request, then perturbed values
        t = draw(st.integers(0, 6))
        k = draw(st.integers(1, 3))
        rows = draw(st.lists(st.lists(st.integers(-3, 9) | st.integers(-2**31, 2**31 - 1), min_size=k, max_size=k),
                             min_size=t, max_size=t))
        ids = torch.tensor(rows, dtype=torch.int32) if t else torch.empty((0, k), dtype=torch.int32)
        special = draw(st.sampled_from(["none", "nan", "inf", "-inf"]))
        weights = torch.rand(t, k) if special == "none" else _special(torch.float32, t, k, special)
        hidden = torch.randn(t, 64)
        if draw(st.booleans()) and t:
            hidden[0, 0] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 3e38]))
        return expert_pb2.CombineRequest(layer=layer, hidden=encode_tensor(hidden), expert_ids=encode_tensor(ids),
                                         weights=encode_tensor(weights))
    return expert_pb2.CombineRequest(layer=layer, hidden=draw(tensors("float32")),
                                     expert_ids=draw(tensors("int32")), weights=draw(tensors("float32")))


@given(combine_requests())
@example(expert_pb2.CombineRequest(layer=0, hidden=expert_pb2.Tensor(dtype="float32", shape=[0] + [1] * 70)))
@example(expert_pb2.CombineRequest(layer=0, hidden=expert_pb2.Tensor(dtype="float32", shape=[0, 2**63 - 1])))
def test_decode_combine_serves_or_refuses_with_a_wire_error(req):
    try:
        job = decode_combine(req, SERVED)
    except WireError as exc:
        assert str(exc)
        return
    assert job.hidden.shape[1] == 64 and job.expert_ids.shape == job.weights.shape
    assert bool(torch.isfinite(job.weights).all())  # hidden may carry NaN/Inf: only those tokens' outputs do


@given(tensors("float32"))
def test_decode_tensor_is_exact_or_a_wire_error(msg):
    try:
        t = decode_tensor(msg, "x", ("float32", "bfloat16", "float16", "int32"))
    except WireError:
        return
    assert list(t.shape) == list(msg.shape) and encode_tensor(t).data == msg.data


@pytest.fixture(scope="module")
def server():
    s = ExpertServer(tiny_mixtral(), "0-3").start().wait_ready()
    yield s
    s.close()


def _combine(stub, hidden, ids, weights):
    req = expert_pb2.CombineRequest(layer=1, hidden=encode_tensor(hidden), expert_ids=encode_tensor(ids),
                                    weights=encode_tensor(weights))
    return stub.Combine(req, timeout=30)


def test_a_burst_of_junk_is_refused_and_the_server_still_serves_exactly(server):
    stub = expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(server.address))
    gen = torch.Generator().manual_seed(0)
    hidden, weights = torch.randn(5, 64, generator=gen), torch.rand(5, 2, generator=gen)
    ids = torch.tensor([[0, 1], [2, 3], [1, -1], [3, 0], [2, 2]], dtype=torch.int32)
    before = decode_tensor(_combine(stub, hidden, ids, weights).output, "output", ("float32",))
    codes = []

    @settings(max_examples=max(50, settings().max_examples // 10))
    @given(combine_requests())
    def burst(req):
        try:
            stub.Combine(req, timeout=30)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
            codes.append(err.code())

    burst()
    assert grpc.StatusCode.INVALID_ARGUMENT in codes
    after = decode_tensor(_combine(stub, hidden, ids, weights).output, "output", ("float32",))
    assert torch.equal(before, after)
    assert server.proc.poll() is None


def test_nan_routing_weights_are_a_wire_error():
    """Found by the fuzzer: NaN weights were accepted and silently poisoned the outputs."""
    req = expert_pb2.CombineRequest(layer=0, hidden=encode_tensor(torch.zeros(1, 64)),
                                    expert_ids=encode_tensor(torch.zeros(1, 1, dtype=torch.int32)),
                                    weights=encode_tensor(torch.tensor([[math.nan]])))
    with pytest.raises(WireError, match="NaN or infinite"):
        decode_combine(req, SERVED)


@pytest.mark.parametrize("shape", [[0, 2, 2**62], [0] + [1] * 70, []])
def test_scalar_and_huge_shapes_are_exact_or_a_wire_error(shape):
    """Found by the fuzzer: torch raised RuntimeError on [0, 2, 2**62]; encode_tensor on a 0-dim tensor."""
    if shape:
        with pytest.raises(WireError, match="too large"):
            decode_tensor(expert_pb2.Tensor(dtype="float32", shape=shape), "x", ("float32",))
    else:
        assert encode_tensor(torch.tensor(1.5)).data == torch.tensor([1.5]).numpy().tobytes()
