"""Disaggregated decode of several git revisions side by side, rounds interleaved, on one machine.

    python -P benchmarks/revisions_ab.py main HEAD [REV ...] [--transport shm] [--rounds 4] [--seqs 64 256]
                                                          [--micro-batches 1 [2 ...]]

On a host shared with other work, two benchmark runs made minutes apart differ more than the code does
(disaggregated_vs_monolithic.py gave 0.46 and 0.94 for the same code under load 5-20). Here every
revision gets its own worker process (gateway engine + its own fleet of 2 groups x 2 expert servers, all
running that revision's code from `git archive`), and the workers take turns round by round (order
reversed every round), so the machine's drift weighs on each alike. Per revision it prints one layer's
RemoteExpertBackend.combine (64 tokens, p50 and mean) with the CPU of the worker and its fleet per combine,
and decode tok/s at each --seqs with CPU per generated token; monolithic decode (the first revision's
code, measured in the same rounds) gives each a disaggregated / monolithic ratio. Under load, CPU per
token is the figure to compare: the ratios also carry how the scheduler shares the cores between fewer
(monolithic) and more (disaggregated) processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def importable_tree(rev: str, into: Path) -> Path:
    """`rev`'s files laid out as the installed package (pyproject's package-dir), for PYTHONPATH."""
    src = into / "src"
    src.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    dirs = tomllib.loads((src / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    root = into / "root"
    for package, folder in sorted(dirs.items(), key=lambda kv: kv[0].count(".")):  # eaas before eaas.gateway
        shutil.copytree(src / folder, root / package.replace(".", "/"), dirs_exist_ok=True)
    return root


def cpu_seconds(pids: list[int]) -> float:
    """CPU time of every thread of pids, from /proc/<pid>/task/<tid>/schedstat (ns resolution)."""
    total = 0
    for pid in pids:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                total += int(Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[0])
            except (OSError, IndexError):
                pass
    return total / 1e9


def worker(base_port: int, transport: str, with_monolithic: bool, micro_batches: int = 1) -> None:
    """Answer commands on stdin ('combine N', 'decode SEQS', 'mono SEQS') with one JSON line each."""
    from eaas.openmp import quiet_idle_workers

    quiet_idle_workers()
    import logging

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from disaggregated_vs_monolithic import (
        KV_CACHE_BYTES,
        ExpertFleet,
        decode_tokens_per_s,
        prompts,
    )
    from eaas.gateway.remote_backend import RemoteExpertBackend

    from eaas.engine.factory import engine_with_backend, monolithic_engine
    from eaas.engine.scheduler import ScheduleLimits
    from eaas.model.checkpoint import Checkpoint
    from eaas.model.tiny import write_tiny_model
    from eaas.rpc.slot_transport import make_transport

    for name in ("eaas", "transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=256, layers=4, experts=8, top_k=2)
        fleet = ExpertFleet(model, 4, 2, base_port)
        try:
            ckpt = Checkpoint(model)
            backend = RemoteExpertBackend(fleet.groups(), fingerprint=ckpt.fingerprint(), layers=ckpt.moe_layers(),
                                          transport=make_transport(transport))
            limits = ScheduleLimits(max_num_seqs=256, max_batched_tokens=8192)
            engines = {"decode": engine_with_backend(ckpt, backend, limits=limits, kv_cache_bytes=KV_CACHE_BYTES,
                                                     micro_batches=micro_batches)}
            if with_monolithic:
                engines["mono"] = monolithic_engine(model, limits=limits, kv_cache_bytes=KV_CACHE_BYTES)
            pids = [os.getpid()] + [p.pid for p in fleet.procs.values()]
            gen = torch.Generator().manual_seed(0)
            hidden = torch.randn(64, 256, generator=gen)
            ids = torch.stack([torch.randperm(8, generator=gen)[:2] for _ in range(64)]).to(torch.int32)
            weights = torch.softmax(torch.randn(64, 2, generator=gen), dim=-1)
            layer = min(ckpt.moe_layers())

            def combine() -> None:
                with torch.inference_mode():  # as the engine calls the backend
                    backend.combine(layer, hidden, ids, weights)
            for _ in range(30):
                combine()
            print(json.dumps({"ready": True}), flush=True)
            for line in sys.stdin:
                command, n = line.split()
                start = cpu_seconds(pids)
                if command == "combine":
                    walls = []
                    for _ in range(int(n)):
                        t = time.perf_counter()
                        combine()
                        walls.append(time.perf_counter() - t)
                    answer = {"walls": walls, "cpu": (cpu_seconds(pids) - start) / int(n)}
                else:
                    tok_s, failed = decode_tokens_per_s(engines[command], prompts(int(n)), 32)
                    answer = {"tok_s": tok_s, "failed": failed,
                              "cpu_per_token": (cpu_seconds(pids) - start) / (int(n) * 32)}
                print(json.dumps(answer), flush=True)
            backend.close()
        finally:
            fleet.fleet.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("revs", nargs="*", help="git revisions (the first one also runs monolithic decode)")
    ap.add_argument("--transport", default="shm", choices=["grpc", "shm"])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seqs", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--combines", type=int, default=200, help="layer combines per round")
    ap.add_argument("--base-port", type=int, default=25100)
    ap.add_argument("--micro-batches", type=int, nargs="+", default=[1],
                    help="micro-batches per decode step; several: each revision runs with each (default 1)")
    ap.add_argument("--worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(int(args.worker[0]), args.worker[1], args.worker[2] == "1", int(args.worker[3]))
    if not args.revs:
        ap.error("name at least one git revision")
    # one variant per (revision, micro-batches): its own worker; the first one also runs monolithic decode
    variants = [(rev, mb) for rev in args.revs for mb in args.micro_batches]
    label = {v: v[0] if len(args.micro_batches) == 1 else f"{v[0]}/mb{v[1]}" for v in variants}
    with tempfile.TemporaryDirectory(prefix="eaas-revs-") as tmp:
        procs = {}
        roots = {rev: importable_tree(rev, Path(tmp) / str(i)) for i, rev in enumerate(args.revs)}
        for i, (rev, mb) in enumerate(variants):
            procs[label[rev, mb]] = subprocess.Popen(
                [sys.executable, "-P", __file__, "--worker", str(args.base_port + 20 * i), args.transport,
                 "1" if i == 0 else "0", str(mb)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, text=True, cwd=tmp, env={**os.environ, "PYTHONPATH": str(roots[rev])})
        names = list(procs)
        try:
            for name, proc in procs.items():
                if not json.loads(proc.stdout.readline() or "{}").get("ready"):
                    raise SystemExit(f"the worker for {name} did not start")

            def ask(name: str, command: str) -> dict:
                procs[name].stdin.write(command + "\n")
                procs[name].stdin.flush()
                return json.loads(procs[name].stdout.readline())
            runs: dict[tuple, list] = {}
            loads = []
            for r in range(args.rounds):
                loads.append(os.getloadavg()[0])
                for name in names if r % 2 == 0 else names[::-1]:
                    runs.setdefault((name, "combine"), []).append(ask(name, f"combine {args.combines}"))
                    for n in args.seqs:
                        runs.setdefault((name, n), []).append(ask(name, f"decode {n}"))
                for n in args.seqs:
                    runs.setdefault(("monolithic", n), []).append(ask(names[0], f"mono {n}"))
        finally:
            for proc in procs.values():
                proc.stdin.close()
                proc.wait(60)
    print(f"transport {args.transport}, micro-batches {args.micro_batches}, {args.rounds} rounds, "
          f"load average (1 min) {min(loads):.1f}-{max(loads):.1f}")
    for name in names:
        c = runs[(name, "combine")]
        walls = [w for o in c for w in o["walls"]]
        print(f"{name:>12}: layer combine p50 {1e3 * statistics.median(walls):.3f} ms, mean "
              f"{1e3 * statistics.fmean(walls):.3f} ms, CPU {1e3 * statistics.fmean(o['cpu'] for o in c):.3f} ms "
              f"per combine (gateway + its 4 expert servers)")
    for n in args.seqs:
        mono = statistics.fmean(o["tok_s"] for o in runs[("monolithic", n)])
        for name in names:
            d = runs[(name, n)]
            tok_s = statistics.fmean(o["tok_s"] for o in d)
            print(f"{name:>12}: {n} seqs {tok_s:7.0f} tok/s (monolithic {mono:.0f}): ratio {tok_s / mono:.3f}, "
                  f"CPU {1e3 * statistics.fmean(o['cpu_per_token'] for o in d):.3f} ms per token, "
                  f"failed {sum(o['failed'] for o in d)}")


if __name__ == "__main__":
    main()
