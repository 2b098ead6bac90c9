"""Per-layer dispatch cost of RemoteExpertBackend.combine vs a bare gRPC unary round trip of the same size.

Starts two expert servers (experts 0-3 and 4-7 of an 8-expert model with hidden size 1024 and a tiny
expert FFN, so that compute is negligible and the figure is dispatch overhead) and one bare echo server,
all on 127.0.0.1 (servers with OMP_NUM_THREADS=1: two servers and the client share the cores, and
spinning OpenMP workers of oversubscribed processes cost more than the math), then times:
  bare:    one unary call carrying a CombineRequest-sized payload (64 tokens x 1024 x fp32 + ids + weights),
           echoed back (the cheapest possible remote layer: one RPC, no tensor work)
  combine: RemoteExpertBackend.combine for a 64-token top-2 decode batch over the 2 groups
Target: combine p50 / bare p50 <= 1.5.

    .venv/bin/python benchmarks/dispatch_overhead.py [--tokens 64] [--iters 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc

ECHO_METHOD = "/bench.Echo/Echo"


def serve_echo(port: int) -> None:
    """A grpc.aio server (as the expert server is) whose one method returns its request bytes."""
    async def main():
        async def echo(request: bytes, context) -> bytes:
            return request

        handler = grpc.method_handlers_generic_handler(
            "bench.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 << 20),
                                          ("grpc.max_send_message_length", 64 << 20)])
        server.add_generic_rpc_handlers([handler])
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(main())


def write_checkpoint(root: Path) -> Path:
    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    config = MixtralConfig(vocab_size=256, hidden_size=1024, num_hidden_layers=1, num_attention_heads=8,
                           num_key_value_heads=2, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
                           tie_word_embeddings=False, max_position_embeddings=128)
    MixtralForCausalLM(config).save_pretrained(root)
    return root


def timed(fn, iters: int) -> list[float]:
    for _ in range(20):  # warm-up: connections, allocator, first-call paths
        fn()
    samples = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def summary(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return (f"p50 {statistics.median(samples) * 1e3:.3f} ms  p90 {q[89] * 1e3:.3f} ms  "
            f"mean {statistics.fmean(samples) * 1e3:.3f} ms")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--iters", type=int, default=300)
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        serve_echo(args.echo_server)
        return 0

    import torch

    torch.set_num_threads(1)  # the client shares 2 cores with two servers: no spinning OpenMP workers

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from servers import free_port, wait_for_port  # the test suite's port helpers

    from eaas.rpc.wire import encode_tensor
    from eaas.gateway.remote_backend import RemoteExpertBackend
    from eaas.model.checkpoint import Checkpoint
    from eaas.protos import expert_pb2

    tmp = tempfile.TemporaryDirectory(prefix="eaas-bench-")
    model = write_checkpoint(Path(tmp.name))
    ports = [free_port() for _ in range(3)]
    metrics_ports = [free_port() for _ in range(2)]
    procs = [subprocess.Popen([sys.executable, "-P", "-m", "eaas.cli", "expert-server", "--model", str(model), "--experts",
                               experts, "--host", "127.0.0.1", "--port", str(port), "--metrics-port", str(mport)],
                              stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
             for experts, port, mport in zip(("0-3", "4-7"), ports, metrics_ports)]
    procs.append(subprocess.Popen([sys.executable, __file__, "--echo-server", str(ports[2])]))
    try:
        for port in ports:
            wait_for_port(port, 120)
        gen = torch.Generator().manual_seed(0)
        hidden = torch.randn(args.tokens, 1024, generator=gen)
        ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(args.tokens)])
        weights = torch.softmax(torch.randn(args.tokens, 2, generator=gen), dim=-1)

        payload = expert_pb2.CombineRequest(layer=0, hidden=encode_tensor(hidden), expert_ids=encode_tensor(
            ids.to(torch.int32)), weights=encode_tensor(weights)).SerializeToString()
        channel = grpc.insecure_channel(f"127.0.0.1:{ports[2]}",
                                        options=[("grpc.max_receive_message_length", 64 << 20)])
        echo = channel.unary_unary(ECHO_METHOD)
        bare = timed(lambda: echo(payload, timeout=10), args.iters)

        requests = []  # what the backend sends: per group, its tokens only
        for group in range(2):
            in_group = (ids // 4) == group
            rows = in_group.any(dim=1).nonzero().squeeze(1)
            group_ids = torch.where(in_group, ids, -1)[rows].to(torch.int32)
            requests.append(expert_pb2.CombineRequest(layer=0, hidden=encode_tensor(hidden[rows]),
                                                      expert_ids=encode_tensor(group_ids),
                                                      weights=encode_tensor(weights[rows])))
        sync_futures = _two_calls_with_sync_futures(ports[:2], requests, args.iters)
        aio_loop = _two_calls_with_aio_loop_thread(ports[:2], requests, args.iters)

        table = [((0, 1, 2, 3), [f"127.0.0.1:{ports[0]}"]), ((4, 5, 6, 7), [f"127.0.0.1:{ports[1]}"])]
        backend = RemoteExpertBackend(table, fingerprint=Checkpoint(model).fingerprint())
        remote = timed(lambda: backend.combine(0, hidden, ids, weights), args.iters)
        backend.close()
        compute = [_server_compute_seconds(p) for p in metrics_ports]

        print(f"payload: {args.tokens} tokens x 1024 fp32, top-2 of 8 experts, 2 groups x 1 replica; "
              f"{len(payload) / 1024:.0f} KiB per bare call; {args.iters} iterations")
        print(f"bare gRPC unary echo     : {summary(bare)}")
        print(f"RemoteExpertBackend layer: {summary(remote)}")
        print("server compute per combine: " + ", ".join(f"g{i} {c * 1e3:.3f} ms" for i, c in enumerate(compute)))
        print(f"2 concurrent Combine RPCs, sync-channel futures   : {summary(sync_futures)}")
        print(f"2 concurrent Combine RPCs, grpc.aio on a loop thread: {summary(aio_loop)}")
        dispatch = statistics.median(remote) - max(compute)
        raw_ratio = statistics.median(remote) / statistics.median(bare)
        print(f"ratio p50 combine / bare : {raw_ratio:.2f} (raw, includes expert compute)")
        print(f"ratio dispatch / bare    : {dispatch / statistics.median(bare):.2f} (combine p50 minus the slower "
              f"group's mean compute; target <= 1.5)")
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)
        tmp.cleanup()
    return 0


def _two_calls_with_sync_futures(ports, requests, iters) -> list[float]:
    from eaas.protos import expert_pb2_grpc

    stubs = [expert_pb2_grpc.ExpertServiceStub(grpc.insecure_channel(f"127.0.0.1:{p}")) for p in ports]

    def both():
        for future in [stub.Combine.future(r, timeout=10) for stub, r in zip(stubs, requests)]:
            future.result()
    return timed(both, iters)


def _two_calls_with_aio_loop_thread(ports, requests, iters) -> list[float]:
    import threading

    from eaas.protos import expert_pb2_grpc

    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def open_stubs():
        return [expert_pb2_grpc.ExpertServiceStub(grpc.aio.insecure_channel(f"127.0.0.1:{p}")) for p in ports]
    stubs = asyncio.run_coroutine_threadsafe(open_stubs(), loop).result()

    async def both():
        await asyncio.gather(*[stub.Combine(r, timeout=10) for stub, r in zip(stubs, requests)])
    samples = timed(lambda: asyncio.run_coroutine_threadsafe(both(), loop).result(), iters)
    loop.call_soon_threadsafe(loop.stop)
    return samples


def _server_compute_seconds(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    values = {line.split()[0]: float(line.split()[1]) for line in text.splitlines()
              if line.startswith("eaas_expert_combine_seconds_")}
    return values["eaas_expert_combine_seconds_sum"] / max(1.0, values["eaas_expert_combine_seconds_count"])


if __name__ == "__main__":
    sys.exit(main())
