"""`eaas up` serving N concurrent OpenAI streams vs transformers.generate batched, same checkpoint, per transport.

    python -P benchmarks/up_vs_generate.py [--streams 64] [--new-tokens 32] [--transport shm grpc] [--rounds 2]
                                           [--check 4] [--json]

The checkpoint is benchmarks/disaggregated_vs_monolithic.py's tiny random Mixtral (hidden 256, 4 layers,
8 experts, top-2, fp32, written by transformers), and the prompts are that script's (8-24 random token ids).
Per transport, a fresh `eaas up --transport T` on free ports (2 groups x 2 replicas as processes, 1 gateway;
`eaas up` gives each of its 5 processes 1 OpenMP thread on these 2 cores), then rounds alternating A B B A:
A  the load generator (benchmarks/openai_stream_load.py, aiohttp, one session) streams every prompt at once
   through the gateway's /v1/completions: max_tokens N, ignore_eos, greedy. tok/s = tokens counted from the
   streams / wall time from the first send to the last stream's end (one warm-up request before it);
B  transformers' model.generate on the same prompts in this process: one batch, left padding, greedy, N new
   tokens with EOS not ending a row (eos_token_id=[]: what ignore_eos does), once at each of
   --generate-threads torch threads (default 1 and all cores; measured here under load, 2 threads ran
   generate ~3x slower than 1, so the library is compared at its best setting, not at torch's default).
Each side had the whole machine: the fleet idles, blocked, while generate runs, and the HF model while the
fleet serves. Each figure is the median of its rounds; ratio = A / the fastest B (target >= 1.0).
Per round the CPU seconds of each process, read from /proc: the gateway, the expert servers, `eaas up`
itself, this process (the client in A, generate in B) and the rest of the machine (other work on the cores).
Exactness: the tokens each of the first --check streams carried equal transformers' greedy tokens for that
prompt generated alone; the number of streams equal to generate's batched (padded) rows is reported too.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from dataclasses import dataclass

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # as the eaas command does, before torch loads libgomp

import psutil  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the benchmarks beside this file

from disaggregated_vs_monolithic import prompts  # noqa: E402
from monolithic_vs_hf import hf_generate  # noqa: E402
from openai_stream_load import run_stream_batch  # noqa: E402
from plan_profile import up_fleet  # noqa: E402

UP = "eaas_up"
SERVING = {"gateway", "experts", "eaas_up"}  # the processes that serve the streams (not the client)
NO_EOS = {"eos_token_id": []}  # transformers' generate with no end-of-sequence token: ignore_eos


@dataclass(frozen=True)
class Round:
    side: str                   # UP or generate_<threads>t
    tokens: int
    wall_s: float
    cpu_s: dict[str, float]     # component -> CPU seconds during the round
    failed: int = 0             # streams that did not carry exactly N tokens and [DONE]


def generate_side(threads: int) -> str:
    return f"generate_{threads}t"


def ab_order(rounds: int, sides: list[str]) -> list[str]:
    """A B, B A, A B, ...: the machine's drift during the run weighs on every side alike."""
    return [side for i in range(rounds) for side in (sides if i % 2 == 0 else sides[::-1])]


def cpu_split(before: dict[str, float], after: dict[str, float], machine_s: float) -> dict[str, float]:
    """Per component CPU seconds between two readings; `other` is the machine's busy time not in them."""
    spent = {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
    spent["other"] = max(0.0, machine_s - sum(spent.values()))
    return spent


def summarize(rounds: list[Round], new_tokens: int) -> dict:
    """eaas up's median tok/s over the fastest generate side's median; per side, CPU milliseconds per
    generated token by component, `serving` their sum without the client (generate: this process), and the
    same ratio per CPU-second of serving (which does not depend on how much of shared cores each side got)."""
    sides = list(dict.fromkeys(r.side for r in rounds))
    tok_s = {side: statistics.median(r.tokens / r.wall_s for r in rounds if r.side == side) for side in sides}
    best = max((s for s in sides if s != UP), key=tok_s.get)
    out = {"up_openai_over_generate": round(tok_s[UP] / tok_s[best], 3), "generate_best": best,
           "tok_s": {side: round(v, 1) for side, v in tok_s.items()},
           "rounds_tok_s": {side: [round(r.tokens / r.wall_s, 1) for r in rounds if r.side == side] for side in sides},
           "failed_streams": sum(r.failed for r in rounds), "new_tokens": new_tokens, "cpu_ms_per_token": {}}
    for side in sides:
        mine = [r for r in rounds if r.side == side]
        tokens = sum(r.tokens for r in mine)
        names = sorted({n for r in mine for n in r.cpu_s})
        out["cpu_ms_per_token"][side] = {n: round(1e3 * sum(r.cpu_s.get(n, 0.0) for r in mine) / tokens, 3)
                                         for n in names}
        serving = sum(r.cpu_s.get(n, 0.0) for r in mine for n in (SERVING if side == UP else {"this_process"}))
        out["cpu_ms_per_token"][side]["serving"] = round(1e3 * serving / tokens, 3)
        out["cpu_ms_per_token"][side]["wall"] = round(1e3 * sum(r.wall_s for r in mine) / tokens, 3)
    per_token = out["cpu_ms_per_token"]
    out["up_openai_over_generate_per_cpu_s"] = round(per_token[best]["serving"] / per_token[UP]["serving"], 3)
    return out


class CpuMeter:
    """CPU seconds (user + system, from /proc) of the fleet's processes by role, this process, and the machine."""

    def __init__(self, fleet):
        self.procs: dict[str, list[psutil.Process]] = {
            "gateway": [fleet.gateway_process(0)],
            "experts": [fleet.process_listening_on(a) for addrs in fleet.expert_addresses().values() for a in addrs],
            "eaas_up": [psutil.Process(fleet.proc.pid)],
            "this_process": [psutil.Process()],
        }

    def read(self) -> tuple[dict[str, float], float]:
        per_role = {role: sum(sum(p.cpu_times()[:2]) for p in procs) for role, procs in self.procs.items()}
        t = psutil.cpu_times()
        return per_role, t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)

    def around(self, run):
        """run() -> (result, cpu_split of the call)."""
        before, machine = self.read()
        result = run()
        after, machine_after = self.read()
        return result, cpu_split(before, after, machine_after - machine)


def timed_generate(hf, batch: list[list[int]], new_tokens: int, threads: int) -> tuple[list[list[int]], float]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return hf_generate(hf, batch, new_tokens, **NO_EOS)
    finally:
        torch.set_num_threads(before)


def measure_transport(model_dir: str, hf, batch: list[list[int]], new_tokens: int, transport: str, rounds: int,
                      threads: list[int], check: int, say) -> dict:
    fleet = up_fleet(model_dir, extra=("--transport", transport))
    try:
        meter = CpuMeter(fleet)
        run_stream_batch(fleet.http, batch, 4)  # the first full batch (allocations, thread pools) untimed
        done: list[Round] = []
        streamed, batched = [], []
        for side in ab_order(rounds, [UP] + [generate_side(t) for t in threads]):
            if side == UP:
                res, cpu = meter.around(lambda: run_stream_batch(fleet.http, batch, new_tokens))
                streamed = [t.token_ids for t in res.tallies]
                done.append(Round(UP, res.tokens, res.wall_s, cpu, res.failed(new_tokens)))
            else:
                t = next(t for t in threads if generate_side(t) == side)
                (batched, wall), cpu = meter.around(lambda: timed_generate(hf, batch, new_tokens, t))
                done.append(Round(side, sum(len(o) for o in batched), wall, cpu))
            r = done[-1]
            say(f"  [{transport}] {side:11s} {r.tokens / r.wall_s:8.1f} tok/s  ({r.tokens} tokens in {r.wall_s:.2f} s"
                + (f", {r.failed} failed streams)" if side == UP else ")"), flush=True)
    finally:
        fleet.stop()
    result = summarize(done, new_tokens)
    alone = [timed_generate(hf, [p], new_tokens, 1)[0][0] for p in batch[:check]]
    result["exact_vs_generate_alone"] = f"{sum(a == b for a, b in zip(alone, streamed))}/{len(alone)}"
    result["equal_to_generate_batched"] = f"{sum(a == b for a, b in zip(batched, streamed))}/{len(batch)}"
    return result


def up_vs_generate(model_dir: str, streams: int, new_tokens: int, transports: list[str], rounds: int = 2,
                   threads: list[int] | None = None, check: int = 4, say=print) -> dict[str, dict]:
    """Per transport: `eaas up` with `streams` concurrent OpenAI streams / transformers.generate batched."""
    from transformers import AutoModelForCausalLM

    threads = threads or default_generate_threads()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = prompts(streams)
    for t in threads:  # the first full batch untimed, as for the fleet
        timed_generate(hf, batch, 4, t)
    say(f"{streams} streams x {new_tokens} tokens; rounds per transport: "
        f"{' '.join(ab_order(rounds, [UP] + [generate_side(t) for t in threads]))}")
    results = {}
    for transport in transports:
        results[transport] = r = measure_transport(model_dir, hf, batch, new_tokens, transport, rounds, threads,
                                                   check, say)
        best = r["generate_best"]
        say(f"{streams} OpenAI streams [{transport:4s}]: eaas up {r['tok_s'][UP]:8.1f} tok/s  transformers.generate "
            f"{r['tok_s'][best]:8.1f} tok/s ({best}; {', '.join(f'{s} {v}' for s, v in r['tok_s'].items() if s != UP)})"
            f"  ratio {r['up_openai_over_generate']:5.2f} (target >= 1.0; per CPU-second of serving "
            f"{r['up_openai_over_generate_per_cpu_s']:.2f}), failed streams {r['failed_streams']}, "
            f"exact vs generate alone {r['exact_vs_generate_alone']}, equal to batched rows "
            f"{r['equal_to_generate_batched']}")
        for side, parts in r["cpu_ms_per_token"].items():
            say(f"    CPU ms per token, {side}: " + "  ".join(f"{k} {v:.3f}" for k, v in parts.items()))
    return results


def default_generate_threads() -> list[int]:
    return sorted({1, os.cpu_count() or 1})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64, help="concurrent streaming requests = generate's batch")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--transport", nargs="+", default=["shm", "grpc"], choices=["auto", "shm", "grpc"],
                    help="`eaas up --transport` values to measure, one fresh fleet each (default: shm grpc)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side, interleaved A B B A (default 2)")
    ap.add_argument("--generate-threads", type=int, nargs="+", default=default_generate_threads(),
                    help="torch threads for generate, each measured; the fastest is compared (default: 1 and "
                         "all cores)")
    ap.add_argument("--check", type=int, default=4, help="streams checked against generate alone (default 4)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()
    from eaas.model.tiny import write_tiny_model

    say = (lambda *a, **k: None) if args.json else print
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        say(f"model: tiny mixtral hidden {args.hidden_size}, 4 layers, 8 experts top-2, fp32")
        results = up_vs_generate(model, args.streams, args.new_tokens, args.transport, args.rounds,
                                 args.generate_threads, args.check, say)
    if args.json:
        print(json.dumps({"streams": args.streams, "transports": results}))


if __name__ == "__main__":
    main()
