"""Disaggregated decode with the gateway and the expert servers each on their own core, against sharing them.

    python -P benchmarks/pinned_cores.py [--seqs 64 256] [--rounds 2] [--gateway-threads 1] [--replicas 2]

On a cluster the gateway and each expert replica run on their own nodes; on this 2-core machine they share
both cores, so an expert server's weights and code come back cold after the gateway or another server ran
there (README "Micro-batches that take turns"). This pins the gateway (this process, --gateway-threads
OpenMP threads) to core 0 and every expert server to core 1, the shape of two nodes of one core each, and
measures decode tok/s with 1 and 2 micro-batches (every step split), pinned and unpinned, against the
monolithic engine on both cores, rounds interleaved on the same engines and fleet (shm transport). Each
figure is the mean over rounds; its ratio is over the monolithic mean of the same rounds.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # as the eaas command does, before torch loads libgomp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disaggregated_cpu import queue_and_prefill, run_decode  # noqa: E402
from disaggregated_vs_monolithic import KV_CACHE_BYTES, ExpertFleet, prompts  # noqa: E402

import torch  # noqa: E402

from eaas.engine.factory import engine_with_backend, monolithic_engine  # noqa: E402
from eaas.engine.scheduler import ScheduleLimits  # noqa: E402
from eaas.engine.sequence import SamplingParams  # noqa: E402
from eaas.gateway.remote_backend import RemoteExpertBackend  # noqa: E402
from eaas.model.checkpoint import Checkpoint  # noqa: E402
from eaas.model.tiny import write_tiny_model  # noqa: E402
from eaas.rpc.slot_transport import make_transport  # noqa: E402


def pin(pid: int, cores: set[int]) -> None:
    """Every thread of pid onto cores (affinity is per thread; new threads inherit their creator's)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # the thread ended meanwhile
            pass


def decode_tok_s(engine, n: int, new_tokens: int) -> float:
    """Decode tokens per second of n sequences after their prefill step."""
    queue_and_prefill(engine, prompts(n), new_tokens)
    steps, wall = run_decode(engine)
    return n * steps / wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--gateway-threads", type=int, default=1, help="OpenMP threads of the pinned gateway (default 1)")
    ap.add_argument("--replicas", type=int, default=2, help="replicas per group (default 2)")
    ap.add_argument("--base-port", type=int, default=24600)
    args = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 cores")
    logging.getLogger("eaas").setLevel(logging.ERROR)
    both, threads = set(sorted(os.sched_getaffinity(0))[:2]), torch.get_num_threads()
    gateway_core, expert_core = ({c} for c in sorted(both))
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=256, layers=4, experts=8, top_k=2)
        fleet = ExpertFleet(model, experts_per_server=4, replicas=args.replicas, base_port=args.base_port)
        servers = [fleet.procs[name].pid for name, _, _ in fleet.members]
        ckpt = Checkpoint(model)
        try:
            for n in args.seqs:
                limits = ScheduleLimits(max_num_seqs=n, max_batched_tokens=8192)
                mono = monolithic_engine(model, limits=limits, kv_cache_bytes=KV_CACHE_BYTES)
                disagg = {mb: engine_with_backend(ckpt, RemoteExpertBackend(
                    fleet.groups(), fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(),
                    transport=make_transport("shm")), limits=limits, micro_batches=mb, kv_cache_bytes=KV_CACHE_BYTES,
                    micro_batch_min_tokens=1) for mb in (1, 2)}
                for engine in (mono, *disagg.values()):
                    engine.generate(prompts(n), SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
                tok_s: dict[str, list[float]] = {}
                for _ in range(args.rounds):
                    for pid in (os.getpid(), *servers):
                        pin(pid, both)
                    torch.set_num_threads(threads)
                    tok_s.setdefault("monolithic", []).append(decode_tok_s(mono, n, args.new_tokens))
                    for mb, engine in disagg.items():
                        tok_s.setdefault(f"{mb} micro-batch(es), shared cores", []).append(
                            decode_tok_s(engine, n, args.new_tokens))
                    pin(os.getpid(), gateway_core)
                    for pid in servers:
                        pin(pid, expert_core)
                    torch.set_num_threads(args.gateway_threads)
                    for mb, engine in disagg.items():
                        tok_s.setdefault(f"{mb} micro-batch(es), pinned", []).append(
                            decode_tok_s(engine, n, args.new_tokens))
                pin(os.getpid(), both)
                torch.set_num_threads(threads)
                mono_mean = statistics.fmean(tok_s["monolithic"])
                for name, runs in tok_s.items():
                    mean = statistics.fmean(runs)
                    print(f"{n:4d} seqs  {name:34s} {mean:8.1f} tok/s  / monolithic {mean / mono_mean:.3f}", flush=True)
        finally:
            fleet.fleet.stop()


if __name__ == "__main__":
    main()
