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
   tokens with EOS not ending a row (eos_token_id=[]: what ignore_eos does), torch's default threads.
Each side had the whole machine: the fleet idles, blocked, while generate runs, and the HF model while the
fleet serves. Each figure is the median of its rounds; ratio = A / B (target >= 1.0).
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

UP, GENERATE = "eaas_up", "generate"
NO_EOS = {"eos_token_id": []}  # transformers' generate with no end-of-sequence token: ignore_eos


@dataclass(frozen=True)
class Round:
    side: str                   # UP or GENERATE
    tokens: int
    wall_s: float
    cpu_s: dict[str, float]     # component -> CPU seconds during the round
    failed: int = 0             # streams that did not carry exactly N tokens and [DONE]


def ab_order(rounds: int) -> list[str]:
    """A B, B A, A B, ...: the machine's drift during the run weighs on both sides alike."""
    return [side for i in range(rounds) for side in ((UP, GENERATE) if i % 2 == 0 else (GENERATE, UP))]


def cpu_split(before: dict[str, float], after: dict[str, float], machine_s: float) -> dict[str, float]:
    """Per component CPU seconds between two readings; `other` is the machine's busy time not in them."""
    spent = {name: max(0.0, after[name] - before.get(name, 0.0)) for name in after}
    spent["other"] = max(0.0, machine_s - sum(spent.values()))
    return spent


def summarize(rounds: list[Round], new_tokens: int) -> dict:
    """The ratio of medians and, per side, CPU milliseconds per generated token by component."""
    tok_s = {side: statistics.median(r.tokens / r.wall_s for r in rounds if r.side == side) for side in (UP, GENERATE)}
    out = {"up_openai_over_generate": round(tok_s[UP] / tok_s[GENERATE], 3),
           "tok_s": {side: round(v, 1) for side, v in tok_s.items()},
           "rounds_tok_s": {side: [round(r.tokens / r.wall_s, 1) for r in rounds if r.side == side]
                            for side in (UP, GENERATE)},
           "failed_streams": sum(r.failed for r in rounds), "new_tokens": new_tokens, "cpu_ms_per_token": {}}
    for side in (UP, GENERATE):
        mine = [r for r in rounds if r.side == side]
        tokens = sum(r.tokens for r in mine)
        names = sorted({n for r in mine for n in r.cpu_s})
        out["cpu_ms_per_token"][side] = {n: round(1e3 * sum(r.cpu_s.get(n, 0.0) for r in mine) / tokens, 3)
                                         for n in names}
        out["cpu_ms_per_token"][side]["wall"] = round(1e3 * sum(r.wall_s for r in mine) / tokens, 3)
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


def measure_transport(model_dir: str, hf, batch: list[list[int]], new_tokens: int, transport: str, rounds: int,
                      check: int, say) -> dict:
    fleet = up_fleet(model_dir, extra=("--transport", transport))
    try:
        meter = CpuMeter(fleet)
        run_stream_batch(fleet.http, batch, 4)  # the first full batch (allocations, thread pools) untimed
        done: list[Round] = []
        last: dict[str, list[list[int]]] = {}
        for side in ab_order(rounds):
            if side == UP:
                res, cpu = meter.around(lambda: run_stream_batch(fleet.http, batch, new_tokens))
                last[UP] = [t.token_ids for t in res.tallies]
                done.append(Round(UP, res.tokens, res.wall_s, cpu, res.failed(new_tokens)))
            else:
                (outs, wall), cpu = meter.around(lambda: hf_generate(hf, batch, new_tokens, **NO_EOS))
                last[GENERATE] = outs
                done.append(Round(GENERATE, sum(len(o) for o in outs), wall, cpu))
            r = done[-1]
            say(f"  [{transport}] {side:8s} {r.tokens / r.wall_s:8.1f} tok/s  ({r.tokens} tokens in {r.wall_s:.2f} s"
                + (f", {r.failed} failed streams)" if side == UP else ")"))
    finally:
        fleet.stop()
    result = summarize(done, new_tokens)
    alone = [hf_generate(hf, [p], new_tokens, **NO_EOS)[0][0] for p in batch[:check]]
    result["exact_vs_generate_alone"] = f"{sum(a == b for a, b in zip(alone, last[UP]))}/{len(alone)}"
    result["equal_to_generate_batched"] = f"{sum(a == b for a, b in zip(last[GENERATE], last[UP]))}/{len(batch)}"
    return result


def up_vs_generate(model_dir: str, streams: int, new_tokens: int, transports: list[str], rounds: int = 2,
                   check: int = 4, say=print) -> dict[str, dict]:
    """Per transport: `eaas up` with `streams` concurrent OpenAI streams / transformers.generate batched."""
    from transformers import AutoModelForCausalLM

    logging.getLogger("transformers").setLevel(logging.ERROR)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    batch = prompts(streams)
    hf_generate(hf, batch, 4, **NO_EOS)  # the first full batch untimed, as for the fleet
    results = {}
    for transport in transports:
        results[transport] = r = measure_transport(model_dir, hf, batch, new_tokens, transport, rounds, check, say)
        up, gen = r["tok_s"][UP], r["tok_s"][GENERATE]
        say(f"{streams} OpenAI streams [{transport:4s}]: eaas up {up:8.1f} tok/s  transformers.generate {gen:8.1f} "
            f"tok/s  ratio {r['up_openai_over_generate']:5.2f} (target >= 1.0), failed streams {r['failed_streams']}, "
            f"exact vs generate alone {r['exact_vs_generate_alone']}, equal to batched rows "
            f"{r['equal_to_generate_batched']}")
        for side in (UP, GENERATE):
            parts = "  ".join(f"{k} {v:.3f}" for k, v in r["cpu_ms_per_token"][side].items())
            say(f"    CPU ms per token, {side}: {parts}")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=64, help="concurrent streaming requests = generate's batch")
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--transport", nargs="+", default=["shm", "grpc"], choices=["auto", "shm", "grpc"],
                    help="`eaas up --transport` values to measure, one fresh fleet each (default: shm grpc)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds per side, interleaved A B B A (default 2)")
    ap.add_argument("--check", type=int, default=4, help="streams checked against generate alone (default 4)")
    ap.add_argument("--json", action="store_true", help="print the results as one JSON object")
    args = ap.parse_args()
    from eaas.model.tiny import write_tiny_model

    say = (lambda *a, **k: None) if args.json else print
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        say(f"model: tiny mixtral hidden {args.hidden_size}, 4 layers, 8 experts top-2, fp32; {args.streams} "
            f"streams x {args.new_tokens} tokens; rounds {' '.join(ab_order(args.rounds))}")
        results = up_vs_generate(model, args.streams, args.new_tokens, args.transport, args.rounds, args.check, say)
    if args.json:
        print(json.dumps({"streams": args.streams, "transports": results}))


if __name__ == "__main__":
    main()
