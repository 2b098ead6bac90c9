"""`eaas expert-server` as a real subprocess: answers, refusals, back-pressure, drain, metrics, health."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request

import grpc
import pytest
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from eaas.rpc.wire import decode_tensor, encode_tensor
from eaas.model.checkpoint import Checkpoint
from eaas.model.experts import load_expert_weights
from eaas.protos import expert_pb2, expert_pb2_grpc
from expert_cluster import ExpertServer, start_servers, tiny_mixtral
from slow_relay import SlowRelay


def _stub(server: ExpertServer | SlowRelay) -> expert_pb2_grpc.ExpertServiceStub:
    channel = grpc.insecure_channel(server.address, options=[("grpc.max_send_message_length", 256 << 20),
                                                             ("grpc.max_receive_message_length", 256 << 20)])
    return expert_pb2_grpc.ExpertServiceStub(channel)


def _inputs(tokens: int, dtype=torch.float32, seed=0, experts=4):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, 64, generator=gen).to(dtype)
    ids = torch.randint(0, experts, (tokens, 2), generator=gen, dtype=torch.int32)
    ids[:, 1] = torch.where(ids[:, 1] == ids[:, 0], -1, ids[:, 1])
    weights = torch.rand(tokens, 2, generator=gen).to(dtype)
    return hidden, ids, weights


def _request(layer, hidden, ids, weights) -> expert_pb2.CombineRequest:
    return expert_pb2.CombineRequest(layer=layer, hidden=encode_tensor(hidden), expert_ids=encode_tensor(ids),
                                     weights=encode_tensor(weights))


def _metrics(server: ExpertServer) -> str:
    return urllib.request.urlopen(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=5).read().decode()


def _wait_admitted(server: ExpertServer, count: int, timeout=60.0) -> None:
    """Until `count` Combine calls were admitted (in flight or answered OK), one of them still in flight."""
    deadline = time.monotonic() + timeout
    while True:
        text = _metrics(server)
        inflight = _count(text, "eaas_expert_inflight_requests")
        answered = _count(text, 'eaas_expert_requests_total{code="OK"}', default=0.0)
        if inflight >= 1 and inflight + answered >= count:
            return
        assert time.monotonic() < deadline, "requests never became in flight"
        time.sleep(0.02)


def _wait_inflight(server: ExpertServer, count: int, timeout=30.0) -> None:
    deadline = time.monotonic() + timeout
    while f"eaas_expert_inflight_requests {count}.0" not in _metrics(server):
        assert time.monotonic() < deadline, "request never became in flight"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def servers():
    """bf16 server (experts 0-3) for most tests; fp32 servers for the busy test and the two drain tests."""
    model = tiny_mixtral()
    group = [ExpertServer(model, "0-3", "--dtype", "bfloat16", "--group", "g0"),
             ExpertServer(model, "0-3", "--max-inflight", "1"), ExpertServer(model, "0-3"), ExpertServer(model, "0-3")]
    start_servers(group)
    yield group
    for s in group:
        s.close()


@pytest.fixture(scope="module")
def local_bf16():
    return load_expert_weights(Checkpoint(tiny_mixtral()), [0, 1, 2, 3], dtype=torch.bfloat16)


def test_info_describes_the_served_experts(servers):
    info = _stub(servers[0]).Info(expert_pb2.InfoRequest(), timeout=10)
    assert list(info.expert_ids) == [0, 1, 2, 3] and list(info.layers) == [0, 1, 2]
    assert (info.dtype, info.hidden_size, info.num_experts, info.group) == ("bfloat16", 64, 8, "g0")
    assert info.model_fingerprint == Checkpoint(tiny_mixtral()).fingerprint()
    assert info.model_type == "mixtral" and info.device == "cpu" and info.max_message_bytes == 64 << 20


def test_concurrent_requests_are_batched_and_exact(servers, local_bf16):
    stub = _stub(servers[0])
    before = _metrics(servers[0])
    big = _request(1, *_inputs(100_000, torch.bfloat16, seed=99))
    small = [_inputs(n, torch.bfloat16, seed=n) for n in (1, 5, 17, 64, 3, 9)]
    futures = [stub.Combine.future(big, timeout=60)]
    _wait_inflight(servers[0], 1)  # the small requests queue up while the big one computes
    futures += [stub.Combine.future(_request(1, *x), timeout=60) for x in small]
    replies = [f.result() for f in futures]
    for (hidden, ids, weights), reply in zip(small, replies[1:]):
        out = decode_tensor(reply.output, "output", ("bfloat16",))
        assert torch.equal(out, local_bf16.combine(1, hidden, ids, weights))
    batches = _count(_metrics(servers[0]), "eaas_expert_batch_tokens_count") - _count(
        before, "eaas_expert_batch_tokens_count")
    assert batches < len(futures), "requests queued behind a running batch should have been combined together"


def _count(metrics_text: str, name: str, default: float | None = None) -> float:
    found = [float(line.split()[-1]) for line in metrics_text.splitlines() if line.startswith(name + " ")]
    if not found and default is not None:
        return default
    return found[0]


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r.hidden.__setattr__("dtype", "float16"), "hidden: dtype 'float16' not allowed"),
    (lambda r: r.hidden.__setattr__("data", r.hidden.data[:-2]), "bytes do not match shape"),
    (lambda r: (r.hidden.ClearField("shape"), r.hidden.shape.extend([16, 32])), "shape [16, 32] is not [T, 64]"),
    (lambda r: r.expert_ids.__setattr__("dtype", "float32"), "expert_ids: dtype 'float32' not allowed"),
    (lambda r: (r.weights.ClearField("shape"), r.weights.shape.extend([4, 4])), "weights: shape [4, 4] differs"),
    (lambda r: r.__setattr__("layer", 7), "layer 7 is not served here"),
    (lambda r: r.expert_ids.__setattr__("data", encode_tensor(torch.tensor(
        [[0, 5]] * 8, dtype=torch.int32)).data), "experts 5 are not held by this server (it holds 0-3)"),
    (lambda r: r.expert_ids.__setattr__("data", encode_tensor(torch.full((8, 2), 99, dtype=torch.int32)).data),
     "expert ids 99 out of range 0..7"),
])
def test_bad_request_is_invalid_argument_and_server_keeps_serving(servers, local_bf16, mutate, message):
    stub = _stub(servers[0])
    request = _request(1, *_inputs(8, torch.bfloat16))
    mutate(request)
    with pytest.raises(grpc.RpcError) as err:
        stub.Combine(request, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()
    hidden, ids, weights = _inputs(8, torch.bfloat16)
    out = decode_tensor(stub.Combine(_request(1, hidden, ids, weights), timeout=10).output, "output", ("bfloat16",))
    assert torch.equal(out, local_bf16.combine(1, hidden, ids, weights))


def test_oversized_request_is_invalid_argument(servers):
    tokens = (64 << 20) // (64 * 2) + 1  # bf16 rows: just over the 64 MiB limit
    request = _request(0, *_inputs(tokens, torch.bfloat16))
    with pytest.raises(grpc.RpcError) as err:
        _stub(servers[0]).Combine(request, timeout=60)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "exceeds this server's limit of 67108864 bytes" in err.value.details()


def test_beyond_max_inflight_is_resource_exhausted(servers):
    server = servers[1]  # --max-inflight 1
    stub = _stub(server)
    slow = stub.Combine.future(_request(1, *_inputs(100_000)), timeout=60)
    _wait_inflight(server, 1)
    with pytest.raises(grpc.RpcError) as err:
        stub.Combine(_request(1, *_inputs(4)), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert slow.result().output.shape == [100_000, 64]
    assert stub.Combine(_request(1, *_inputs(4)), timeout=10).output.shape == [4, 64]
    assert 'eaas_expert_requests_total{code="RESOURCE_EXHAUSTED"} 1.0' in _metrics(server)


def test_health_and_reflection_respond(servers):
    channel = grpc.insecure_channel(servers[0].address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "eaas.v1.ExpertService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "eaas.v1.ExpertService" in services and "grpc.health.v1.Health" in services


def test_metrics_endpoint_shows_expert_metrics(servers):
    _stub(servers[0]).Combine(_request(2, *_inputs(8, torch.bfloat16)), timeout=10)
    text = _metrics(servers[0])
    for needle in ('eaas_expert_tokens_total{expert="0"}', "eaas_expert_batch_tokens_bucket",
                   "eaas_expert_combine_seconds_bucket", "eaas_expert_inflight_requests",
                   'eaas_expert_requests_total{code="OK"}', 'eaas_expert_requests_total{code="INVALID_ARGUMENT"}'):
        assert needle in text, needle


def test_sigterm_drains_in_flight_requests_then_exits_zero(servers):
    server = servers[2]
    hidden, ids, weights = _inputs(100_000)
    pending = _stub(server).Combine.future(_request(1, hidden, ids, weights), timeout=60)
    _wait_inflight(server, 1)
    assert server.terminate() == 0
    out = decode_tensor(pending.result().output, "output", ("float32",))
    local = load_expert_weights(Checkpoint(tiny_mixtral()), [0, 1, 2, 3])
    assert torch.equal(out, local.combine(1, hidden, ids, weights))
    assert "event=draining inflight=1" in server.output() and "event=stopped" in server.output()


def test_sigterm_drain_hands_whole_replies_to_a_slow_reader(servers):
    """Large replies still on their way to a client that reads slowly when SIGTERM arrives all arrive whole.

    The relay hands the server's bytes on at 16 MB/s, so each 25.6 MB reply sits in the server's socket well
    after its handler returned. A drain that lets gRPC send GOAWAY while replies are in flight has the
    connection closed as soon as the last reply is handed to the kernel; the client's next WINDOW_UPDATE then
    meets a closed socket, the kernel answers RST and drops the unsent tail (UNAVAILABLE "GOAWAY received
    ... Server shutdown", as seen once in 326 runs of the test above on a loaded machine).
    """
    server = servers[3]
    relay = SlowRelay(server.port, bytes_per_s=16e6)
    try:
        inputs = [_inputs(100_000, seed=seed) for seed in (1, 2)]
        stub = _stub(relay)
        pending = [stub.Combine.future(_request(1, *x), timeout=120) for x in inputs]
        _wait_admitted(server, len(inputs))
        assert server.terminate() == 0
        local = load_expert_weights(Checkpoint(tiny_mixtral()), [0, 1, 2, 3])
        for (hidden, ids, weights), reply in zip(inputs, pending):
            out = decode_tensor(reply.result().output, "output", ("float32",))
            assert torch.allclose(out, local.combine(1, hidden, ids, weights), rtol=1e-5, atol=1e-6)
        assert relay.resets == 0
    finally:
        relay.close()


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/model"], "model directory '/nonexistent/model' does not exist"),
    (["--experts", "9"], "expert id 9 out of range: the model has experts 0..7"),
    (["--experts", "3-1"], "--experts: bad expert range '3-1'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(args, message):
    base = ["--model", str(tiny_mixtral()), "--port", "0", "--metrics-port", "0"]
    proc = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "expert-server", *base, *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"eaas expert-server: error: {message}"]


@pytest.mark.redis
def test_redis_registration_lives_while_serving_and_goes_on_sigterm(redis_server):
    import asyncio

    from eaas.mempool.registry import RegistryReader

    def registered() -> dict:
        async def read():
            reader = RegistryReader.from_url(redis_server.url, deployment="regtest")
            try:
                return await reader.replicas()
            finally:
                await reader.close()
        return asyncio.run(read())

    server = ExpertServer(tiny_mixtral(), "4-7", "--redis", redis_server.url, "--deployment", "regtest",
                          "--group", "g1")
    server.extra += ["--advertise", server.address]
    try:
        server.start().wait_ready()
        deadline = time.monotonic() + 10
        while server.address not in registered():
            assert time.monotonic() < deadline, f"not registered; log:\n{server.output()}"
            time.sleep(0.1)
        entry = registered()[server.address]
        assert (entry.group, entry.experts, entry.layers) == ("g1", (4, 5, 6, 7), (0, 1, 2))
        assert entry.fingerprint == Checkpoint(tiny_mixtral()).fingerprint()
        assert server.terminate() == 0
        assert server.address not in registered()
    finally:
        server.close()
