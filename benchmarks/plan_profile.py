"""Service-rate profile for `eaas plan`, measured on this machine with the real expert server and gateway.

The model: a random Mixtral-shaped checkpoint, hidden 512, expert FFN 768, 8 experts, top-2, 4 layers
(float32), big enough that an expert call turns compute-bound at ~100 pairs, as GPU experts do at hundreds.
1. expert_call_s: one expert server (all 8 experts, OMP_NUM_THREADS=1) timed
   through the gateway's RemoteExpertBackend.combine at growing batches: seconds per Combine RPC vs
   (token, expert) pairs in it, transport included.
2. gateway_layer_s: `eaas up` (2 groups x 2 replicas, 1 gateway) streaming N concurrent requests
   (N = 1..64, 48 tokens each, ignore_eos; two sweeps, medians): step time / MoE layers minus the mean
   Combine RPC round trip the gateway itself recorded (eaas_gateway_expert_rpc_seconds) = the gateway's
   own time per layer.
Writes eaas/plan/profiles/cpu-mixtral-h512.json (the planner's default profile).

    .venv/bin/python -P benchmarks/plan_profile.py [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "system")]

TOKENS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROUNDS = 10
SWEEPS = 2
HIDDEN = 512
MODEL_DIR = Path.home() / ".cache" / "eaas" / "plan-profile-mixtral-h512"


def profile_model() -> Path:
    """The profile's checkpoint (written once, seeded)."""
    from eaas.model.tiny import write_tiny_model

    if not (MODEL_DIR / "config.json").is_file():
        write_tiny_model(MODEL_DIR, "mixtral", seed=0, hidden_size=HIDDEN, layers=4, experts=8, top_k=2)
    return MODEL_DIR
CONCURRENCY = (1, 2, 4, 8, 16, 32, 64)


def expert_call_curve(model: Path) -> tuple[list[float], list[float]]:
    import torch
    from servers import free_port, wait_for_port

    from eaas.gateway.remote_backend import RemoteExpertBackend
    from eaas.model.checkpoint import Checkpoint

    port, mport = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-P", "-m", "eaas.cli", "expert-server", "--model", str(model),
                             "--experts", "0-7", "--host", "127.0.0.1", "--port", str(port),
                             "--metrics-port", str(mport)], stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for_port(port, 180)
        backend = RemoteExpertBackend([(tuple(range(8)), [f"127.0.0.1:{port}"])],
                                      fingerprint=Checkpoint(model).fingerprint())
        gen = torch.Generator().manual_seed(0)
        calls = {}
        for tokens in TOKENS:
            hidden = torch.randn(tokens, HIDDEN, generator=gen)
            ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(tokens)])
            calls[tokens] = (hidden, ids, torch.softmax(torch.randn(tokens, 2, generator=gen), dim=-1))
            for _ in range(5):
                backend.combine(0, *calls[tokens])
        samples = {tokens: [] for tokens in TOKENS}
        for _ in range(ROUNDS):  # interleaved: the machine's load drifts, every batch sees the same drift
            for tokens in TOKENS:
                for _ in range(8):
                    start = time.perf_counter()
                    backend.combine(0, *calls[tokens])
                    samples[tokens].append(time.perf_counter() - start)
        batches = [float(tokens * 2) for tokens in TOKENS]
        seconds = [statistics.median(samples[tokens]) for tokens in TOKENS]
        for b, s in zip(batches, seconds):
            print(f"expert call: {b:5.0f} pairs  {s * 1e3:7.3f} ms", flush=True)
        backend.close()
        return batches, seconds
    finally:
        proc.terminate()
        proc.wait(30)


def up_fleet(model: Path, extra: tuple[str, ...] = ()):
    """`eaas up` (2 groups x 2 replicas, 1 gateway, `extra` flags) on free ports, as the system tests start it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("system_conftest", ROOT / "tests" / "system" / "conftest.py")
    system = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(system)
    return system.UpFleet(model, experts_per_server=4, replicas=2, extra=extra)


def step_sweep(fleet, sweeps: int = 2, concurrency=None) -> tuple[list[float], list[float], list[float]]:
    """Per concurrency: the median step time and the gateway's mean Combine RPC round trip (its own histogram)."""
    from concurrent_streams import metric, stream_all

    concurrency = concurrency or CONCURRENCY
    steps = {n: [] for n in concurrency}
    rpcs = {n: [] for n in concurrency}
    for _ in range(sweeps):
        for n in concurrency:
            lock = threading.Lock()
            prompts = [[(i * 13 + j) % 250 + 1 for j in range(8)] for i in range(n)]
            marks: list[float] = []
            rpc_before = {}

            def on_token(count, n=n, marks=marks, lock=lock, rpc_before=rpc_before):
                with lock:
                    marks.append(time.perf_counter())
                    if count in (n * 8, n * 40):  # the steady part: every stream running
                        rpc_before[count] = (metric(fleet.http, "eaas_gateway_expert_rpc_seconds_sum"),
                                             metric(fleet.http, "eaas_gateway_expert_rpc_seconds_count"))
            _, errors = stream_all(fleet.gateways, prompts, 48, on_token, timeout=300, ignore_eos=True)
            assert not errors, errors
            steady = marks[n * 8: n * 40]
            steps[n].append((steady[-1] - steady[0]) / max(1, (len(steady) - 1) / n))
            (s0, c0), (s1, c1) = rpc_before[n * 8], rpc_before[n * 40]
            rpcs[n].append((s1 - s0) / max(1, c1 - c0))
            print(f"eaas up: {n:3d} streams  step {steps[n][-1] * 1e3:7.2f} ms  "
                  f"Combine RPC {rpcs[n][-1] * 1e3:6.2f} ms", flush=True)
    return ([float(n) for n in concurrency], [statistics.median(steps[n]) for n in concurrency],
            [statistics.median(rpcs[n]) for n in concurrency])


def gateway_layer_seconds(steps: list[float], rpcs: list[float], layers: int = 4) -> list[float]:
    """The gateway's own time per layer: step / layers minus the Combine RPC it waited for."""
    return [max(1e-4, s / layers - r) for s, r in zip(steps, rpcs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "eaas" / "plan" / "profiles" / "cpu-mixtral-h512.json"))
    args = parser.parse_args()
    model = profile_model()
    eb, es = expert_call_curve(model)
    fleet = up_fleet(model)
    try:
        gb, steps, rpcs = step_sweep(fleet, SWEEPS)
    finally:
        fleet.stop()
    gs = gateway_layer_seconds(steps, rpcs)
    doc = {"name": "cpu-mixtral-h512", "source": f"benchmarks/plan_profile.py on this machine ({os.cpu_count()} cores), "
           f"{time.strftime('%Y-%m-%d')}; random Mixtral (hidden 512, expert FFN 768, 8 experts, top-2, 4 layers, float32), CPU torch",
           "expert_call_s": {"batch": eb, "seconds": es},
           "gateway_layer_s": {"batch": gb, "seconds": gs},
           "measured_step_s": {"streams": gb, "seconds": steps},
           "measured_rpc_s": {"streams": gb, "seconds": rpcs}}
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
