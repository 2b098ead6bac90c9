"""Where the CPU of a disaggregated decode step goes: CPU time per process and thread, per decode step.

    python benchmarks/disaggregated_cpu.py [--seqs 64] [--new-tokens 40] [--experts-per-server 4] [--transport grpc] [--micro-batches 1]
                                          [--monolithic]

Runs the same fleet as disaggregated_vs_monolithic.py (expert servers as separate processes, 2 replicas
per group, the engine in this process), decodes one batch and reads utime + stime of every thread from
/proc before and after. On a machine whose cores all processes share, the sum over processes divided by
the core count is a floor for the step time. --monolithic measures the monolithic engine (experts in this
process) on the same batch instead, at torch's default threads and at 1, with the wall time of its experts'
combines: the CPU the disaggregated step adds, and what the expert servers' share costs in-process.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # as the eaas command does, before torch loads libgomp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from disaggregated_vs_monolithic import ExpertFleet, prompts  # noqa: E402

from eaas.engine.factory import engine_with_backend  # noqa: E402
from eaas.engine.scheduler import ScheduleLimits  # noqa: E402
from eaas.engine.sequence import SamplingParams  # noqa: E402
from eaas.rpc.slot_transport import make_transport  # noqa: E402
from eaas.gateway.remote_backend import RemoteExpertBackend  # noqa: E402
from eaas.model.checkpoint import Checkpoint  # noqa: E402
from eaas.model.tiny import write_tiny_model  # noqa: E402


def thread_cpu_seconds(pid: int) -> dict[int, float]:
    """tid -> CPU seconds (user + system) of every live thread of pid."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = open(f"/proc/{pid}/task/{tid}/stat").read().rsplit(")", 1)[1].split()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return out


def queue_and_prefill(engine, batch: list[list[int]], new_tokens: int) -> None:
    """Queue the batch and run its prefill step, which the decode figures leave out."""
    for p in batch:
        engine.add_request(p, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
    engine.step()


def run_decode(engine) -> tuple[int, float]:
    """Step until every sequence is done: (decode steps, wall seconds)."""
    start, steps = time.perf_counter(), 0
    while engine.has_unfinished():
        engine.step()
        steps += 1
    return steps, time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=40)
    ap.add_argument("--experts-per-server", type=int, default=4)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--base-port", type=int, default=24200)
    ap.add_argument("--transport", default="grpc", choices=["grpc", "shm"], help="expert data path (default grpc)")
    ap.add_argument("--micro-batches", type=int, default=1, help="micro-batches per step (default 1)")
    ap.add_argument("--monolithic", action="store_true", help="the monolithic engine instead (no expert servers)")
    args = ap.parse_args()
    if args.monolithic:
        return monolithic(args)
    logging.getLogger("eaas").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        fleet = ExpertFleet(model, experts_per_server=args.experts_per_server, replicas=2, base_port=args.base_port)
        try:
            ckpt = Checkpoint(model)
            backend = RemoteExpertBackend(fleet.groups(), fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(),
                                          transport=make_transport(args.transport))
            engine = engine_with_backend(ckpt, backend, limits=ScheduleLimits(max_num_seqs=args.seqs,
                                                                              max_batched_tokens=8192),
                                         micro_batches=args.micro_batches)
            batch = prompts(args.seqs)
            engine.generate(batch, SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
            queue_and_prefill(engine, batch, args.new_tokens)
            pids = {"gateway (engine)": os.getpid(), **{name: fleet.procs[name].pid for name, _, _ in fleet.members}}
            before = {name: thread_cpu_seconds(pid) for name, pid in pids.items()}
            steps, wall = run_decode(engine)
            after = {name: thread_cpu_seconds(pid) for name, pid in pids.items()}
            backend.close()
        finally:
            fleet.fleet.stop()
    print(f"[{args.transport}, {args.micro_batches} micro-batch(es)] {args.seqs} sequences, {steps} decode steps, {wall / steps * 1e3:.1f} ms per step (wall), "
          f"{os.cpu_count()} cores")
    total = 0.0
    for name, pid in pids.items():
        per_thread = {tid: (after[name][tid] - before[name].get(tid, 0.0)) / steps * 1e3 for tid in after[name]}
        busy = sorted(((ms, tid) for tid, ms in per_thread.items() if ms >= 0.05), reverse=True)
        total += sum(per_thread.values())
        threads = ", ".join(f"{'main' if tid == pid else f'thread {tid}'} {ms:.1f}" for ms, tid in busy)
        print(f"  {name:18s} {sum(per_thread.values()):6.1f} ms CPU per step  ({threads})")
    cores = os.cpu_count() or 1
    print(f"  all processes      {total:6.1f} ms CPU per step -> at least {total / cores:.1f} ms per step on "
          f"{cores} cores")


class TimedBackend:
    """The monolithic engine's LocalExpertBackend, with the wall time of its combines summed."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def combine(self, layer, hidden, expert_ids, weights):
        start = time.perf_counter()
        try:
            return self.inner.combine(layer, hidden, expert_ids, weights)
        finally:
            self.seconds += time.perf_counter() - start


def monolithic(args) -> None:
    import torch
    from disaggregated_vs_monolithic import KV_CACHE_BYTES

    from eaas.model.backend import LocalExpertBackend
    from eaas.model.experts import load_expert_weights

    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        ckpt = Checkpoint(model)
        experts = TimedBackend(LocalExpertBackend(load_expert_weights(ckpt)))
        engine = engine_with_backend(ckpt, experts, limits=ScheduleLimits(max_num_seqs=args.seqs,
                                                                          max_batched_tokens=8192),
                                     kv_cache_bytes=KV_CACHE_BYTES)
        batch = prompts(args.seqs)
        engine.generate(batch, SamplingParams(max_tokens=2, ignore_eos=True))  # warm-up
        for threads in sorted({torch.get_num_threads(), 1}, reverse=True):
            torch.set_num_threads(threads)
            queue_and_prefill(engine, batch, args.new_tokens)
            before, experts.seconds = thread_cpu_seconds(os.getpid()), 0.0
            steps, wall = run_decode(engine)
            after = thread_cpu_seconds(os.getpid())
            cpu = sum(after[t] - before.get(t, 0.0) for t in after) / steps * 1e3
            print(f"[monolithic, {threads} thread(s)] {args.seqs} sequences, {steps} decode steps, "
                  f"{wall / steps * 1e3:.1f} ms per step (wall), {cpu:.1f} ms CPU per step, of which the experts' "
                  f"combine {experts.seconds / steps * 1e3:.1f} ms wall ({os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
