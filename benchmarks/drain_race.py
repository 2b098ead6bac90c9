"""How often SIGTERM loses an in-flight Combine reply: rounds of (start an expert server, put large calls in
flight, SIGTERM, read every reply), counting replies that did not arrive whole.

--relay-mb-s puts tests/data_path/slow_relay.py between client and server (a client that reads slowly, as
a loaded gateway does): without it the race shows about once in hundreds of rounds on a loaded machine.
Run the code of another checkout with PYTHONPATH pointing at a tree whose eaas/ holds that checkout's
packages (eaas/expert_service, eaas/protos, ...), e.g. to count before and after a fix.

    .venv/bin/python -P benchmarks/drain_race.py --rounds 50 --calls 2 --relay-mb-s 16
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
import urllib.request
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1] / "tests" / d) for d in ("", "data_path")]


def admitted(metrics_port: int) -> tuple[float, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).read().decode()
    values = {line.split()[0]: float(line.split()[-1]) for line in text.splitlines() if not line.startswith("#")}
    return (values.get("eaas_expert_inflight_requests", 0.0),
            values.get('eaas_expert_requests_total{code="OK"}', 0.0))


def one_round(model, calls: int, tokens: int, relay_rate: float | None, outcomes: collections.Counter) -> None:
    import grpc
    import torch
    from expert_cluster import ExpertServer
    from slow_relay import SlowRelay

    from eaas.rpc.wire import encode_tensor
    from eaas.protos import expert_pb2, expert_pb2_grpc

    server = ExpertServer(model, "0-3").start().wait_ready(timeout=300)
    relay = SlowRelay(server.port, relay_rate) if relay_rate else None
    channel = grpc.insecure_channel((relay or server).address, options=[
        ("grpc.max_send_message_length", 256 << 20), ("grpc.max_receive_message_length", 256 << 20)])
    try:
        gen = torch.Generator().manual_seed(0)
        ids = torch.randint(0, 4, (tokens, 2), generator=gen, dtype=torch.int32)
        request = expert_pb2.CombineRequest(layer=1, hidden=encode_tensor(torch.randn(tokens, 64, generator=gen)),
                                            expert_ids=encode_tensor(ids),
                                            weights=encode_tensor(torch.rand(tokens, 2, generator=gen)))
        stub = expert_pb2_grpc.ExpertServiceStub(channel)
        pending = [stub.Combine.future(request, timeout=120) for _ in range(calls)]
        deadline = time.monotonic() + 60
        while True:
            inflight, answered = admitted(server.metrics_port)
            if inflight >= 1 and inflight + answered >= calls:
                break
            if time.monotonic() > deadline:
                raise TimeoutError("calls never became in flight")
            time.sleep(0.02)
        outcomes[f"exit {server.terminate(timeout=120)}"] += 1
        drained = [line for line in server.output().splitlines() if "event=replies_sent" in line]
        print("  server:", drained[0].split("event=")[1] if drained else "no replies_sent line", flush=True)
        if drained and "unsent=0" not in drained[0]:
            outcomes["rounds whose drain grace ran out"] += 1  # replies cut off on purpose, not by the race
        for reply in pending:
            try:
                outcomes["whole" if list(reply.result().output.shape) == [tokens, 64] else "wrong shape"] += 1
            except grpc.RpcError as exc:
                outcomes[f"lost: {exc.code().name} {exc.details()[:90]}"] += 1
        outcomes["relay resets"] += relay.resets if relay else 0
    finally:
        channel.close()
        if relay:
            relay.close()
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--calls", type=int, default=2, help="Combine calls in flight at SIGTERM")
    parser.add_argument("--tokens", type=int, default=100_000, help="rows per call (reply: tokens x 64 fp32)")
    parser.add_argument("--relay-mb-s", type=float, default=None, help="slow reader: MB/s server -> client")
    args = parser.parse_args()
    from expert_cluster import tiny_mixtral

    model = tiny_mixtral()
    outcomes: collections.Counter = collections.Counter()
    started = time.monotonic()
    for r in range(args.rounds):
        one_round(model, args.calls, args.tokens, args.relay_mb_s and args.relay_mb_s * 1e6, outcomes)
        print(f"round {r + 1}/{args.rounds}: {dict(outcomes)}", flush=True)
    lost = sum(n for k, n in outcomes.items() if k.startswith("lost"))
    print(f"{args.rounds} rounds x {args.calls} calls in {time.monotonic() - started:.0f}s: "
          f"{lost} replies lost, {outcomes['whole']} whole, relay resets {outcomes['relay resets']}, "
          f"rounds whose drain grace (30 s) ran out {outcomes['rounds whose drain grace ran out']}")


if __name__ == "__main__":
    main()
