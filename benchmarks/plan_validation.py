"""Validate `eaas plan`'s simulator against a real `eaas up`: replay one bursty trace on both, compare.

In one run, on this machine:
1. `eaas up` (the profile's Mixtral: hidden 512, 8 experts, top-2, 4 layers; 2 groups x 2 replicas,
   1 gateway) is calibrated at steady concurrency (1..128 streams, two sweeps, medians): step time and the gateway's own
   Combine RPC time -> a service profile for this run (benchmarks/plan_profile.py's method);
2. a generated BurstGPT-shaped trace (bursty Gamma arrivals, Zipf lengths up to 64 tokens) is replayed
   against it, each request at its arrival time (eaas.plan.replay): throughput (tokens / time to the last
   token) and p99 inter-token latency measured per streamed token;
3. the simulator replays the same trace on the same deployment (static 2 replicas per group, uniform
   routing) with that profile. Target: simulated within 15% of measured, both figures.
Inter-token latency is measured twice: at the client (what a user sees; the client runs on the same
2 cores here) and in the gateway (its eaas_gateway_inter_token_latency_seconds histogram over the
replay, quantiles interpolated within its buckets as Prometheus does), which leaves the client out.

    .venv/bin/python -P benchmarks/plan_validation.py [--seconds 60] [--rate-scale 6] [--seed 1] [--tick-ms 10]
        [--again] [--save FILE | --measured FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from plan_profile import gateway_layer_seconds, profile_model, step_sweep, up_fleet  # noqa: E402
from concurrent_streams import metric  # noqa: E402  (tests/system, put on the path by plan_profile)

CALIBRATION = (1, 2, 4, 8, 16, 32, 64, 128)
ITL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)  # gateway/metrics.py


def itl_histogram(url: str) -> list[float]:
    """The gateway's cumulative ITL bucket counts (le=each bound, then +Inf)."""
    name = "eaas_gateway_inter_token_latency_seconds_bucket"
    return [metric(url, f'{name}{{le="{float(b)}"}}') for b in ITL_BUCKETS] + [metric(url, f'{name}{{le="+Inf"}}')]


def one_stream_gaps(gateways: list[str], tokens: int = 300) -> list[float]:
    """Inter-token gaps of one stream alone (each one step at batch 1): the step's own spread."""
    from eaas.client import SyncClient

    marks = []
    with SyncClient(gateways, timeout=300) as client:
        for chunk in client.generate_stream(prompt_ids=[7, 8, 9], max_tokens=tokens, ignore_eos=True):
            marks.extend([time.perf_counter()] * len(chunk.token_ids))
    return [b - a for a, b in zip(marks[8:], marks[9:])]


def histogram_quantile(cumulative: list[float], q: float) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    total = cumulative[-1]
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(ITL_BUCKETS, cumulative):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return ITL_BUCKETS[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="trace length")
    parser.add_argument("--rate-scale", type=float, default=6.0, help="x BurstGPT's 2 requests/s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--save", metavar="FILE", help="write the calibration and measured token times as JSON")
    parser.add_argument("--measured", metavar="FILE", help="skip eaas up: compare with a --save file instead")
    parser.add_argument("--again", action="store_true",
                        help="replay the trace a second time: how far the real system is from itself")
    parser.add_argument("--tick-ms", type=float, default=10.0, help="the simulator's time step (steps here: 30-200 ms)")
    args = parser.parse_args()

    import numpy as np

    from eaas.plan.generator import TraceShape, generate_trace
    from eaas.plan.policies import StaticPolicy
    from eaas.plan.replay import ReplayResult, replay
    from eaas.plan.service import profile_from_dict
    from eaas.plan.simulator import Autoscaling, Deployment, simulate

    trace = generate_trace(TraceShape(hours=args.seconds / 3600, rate_scale=args.rate_scale, day_amplitude=0.0,
                                      max_prompt_tokens=32, max_response_tokens=64), seed=args.seed)
    print(f"trace: {len(trace)} requests over {trace.duration_s:.0f} s, {int(trace.response_tokens.sum())} "
          f"response tokens, prompts {int(trace.prompt_tokens.sum())} tokens", flush=True)
    if args.measured:
        saved = json.loads(Path(args.measured).read_text())
        streams, steps, rpcs = saved["streams"], saved["steps"], saved["rpcs"]
        measured = ReplayResult(0.0, saved["token_times"], saved["errors"])
        gateway_itl = saved.get("gateway_itl")
        gaps = saved.get("one_stream_gaps") or []
    else:
        fleet = up_fleet(profile_model())
        try:
            streams, steps, rpcs = step_sweep(fleet, 2, CALIBRATION)
            gaps = one_stream_gaps(fleet.gateways)
            before = itl_histogram(fleet.http), metric(fleet.http, "eaas_gateway_preemptions_total")
            started = time.perf_counter()
            measured = replay(trace, fleet.gateways)
            gateway_itl = [b - a for a, b in zip(before[0], itl_histogram(fleet.http))]
            preempted = metric(fleet.http, "eaas_gateway_preemptions_total") - before[1]
            print(f"gateway preemptions (KV cache full) during the replay: {preempted:.0f}", flush=True)
            if args.again:
                second = replay(trace, fleet.gateways)
                print("the same trace replayed again, second vs first: "
                      f"throughput {second.throughput():.1f} vs {measured.throughput():.1f} tokens/s "
                      f"({(second.throughput() / measured.throughput() - 1) * 100:+.1f}%), p99 ITL "
                      f"{second.itl_quantile(0.99) * 1e3:.1f} vs {measured.itl_quantile(0.99) * 1e3:.1f} ms "
                      f"({(second.itl_quantile(0.99) / measured.itl_quantile(0.99) - 1) * 100:+.1f}%), p50 "
                      f"{second.itl_quantile(0.5) * 1e3:.1f} vs {measured.itl_quantile(0.5) * 1e3:.1f} ms "
                      f"({(second.itl_quantile(0.5) / measured.itl_quantile(0.5) - 1) * 100:+.1f}%)", flush=True)
            print(f"replayed in {time.perf_counter() - started:.1f} s; errors: {len(measured.errors)}", flush=True)
        finally:
            fleet.stop()
        if args.save:
            Path(args.save).write_text(json.dumps({"streams": streams, "steps": steps, "rpcs": rpcs, "errors":
                                                   measured.errors, "token_times": measured.token_times,
                                                   "gateway_itl": gateway_itl, "one_stream_gaps": gaps}))
    for n, st, r in zip(streams, steps, rpcs):
        print(f"calibration: {n:3.0f} streams  step {st * 1e3:7.2f} ms  Combine RPC {r * 1e3:6.2f} ms", flush=True)
    # the simulator's per-RPC batch for N streams here: N x 1 gateway x top-2 x share 1/2 / 1 RPC at a time = N
    profile = profile_from_dict({"name": "this run", "expert_call_s": {"batch": streams, "seconds": rpcs},
                                 "gateway_layer_s": {"batch": streams, "seconds": gateway_layer_seconds(steps, rpcs)}})
    dep = Deployment(experts=8, top_k=2, moe_layers=4, experts_per_group=4, gateways=1, max_batch_per_gateway=256,
                     min_replicas=2, max_replicas=2, startup_s=0.0, prefill_chunk_tokens=2048)
    shares = np.full((int(trace.duration_s) // 60 + 2, 2), 0.5)
    runs = {"simulated": None}
    if len(gaps) >= 8:  # the step's own spread at a fixed batch, from the 1-stream calibration
        g = np.asarray(gaps) / float(np.median(gaps))
        runs["+jitter"] = g[g >= 0.25]  # a near-0 gap is two tokens delivered together, not a step
        print(f"one stream alone: {len(gaps)} gaps, p50 {np.median(gaps) * 1e3:.1f} ms, p99 / p50 = "
              f"{np.quantile(runs['+jitter'], 0.99):.2f}")
    sims = {name: simulate(trace, StaticPolicy(np.array([2, 2])), np.array([2, 2]), shares, dep, Autoscaling(1e9),
                           profile, slo_itl_s=1.0, duration_s=trace.duration_s + 120, tick_s=args.tick_ms / 1e3,
                           step_jitter=jitter) for name, jitter in runs.items()}
    figures = [("throughput, tokens/s", measured.throughput(), lambda o: o.served_tokens / o.last_token_s),
               ("p99 inter-token latency, ms", measured.itl_quantile(0.99) * 1e3, lambda o: o.itl_p99_s * 1e3),
               ("p50 inter-token latency, ms", measured.itl_quantile(0.5) * 1e3, lambda o: o.itl_p50_s * 1e3)]
    if gateway_itl:
        figures += [("p99 ITL in the gateway, ms", histogram_quantile(gateway_itl, 0.99) * 1e3,
                     lambda o: o.itl_p99_s * 1e3),
                    ("p50 ITL in the gateway, ms", histogram_quantile(gateway_itl, 0.5) * 1e3,
                     lambda o: o.itl_p50_s * 1e3)]
    print(f"measured tokens {measured.tokens}, simulated {sims['simulated'].served_tokens:.0f}")
    print(f"{'figure':<30}{'measured':>10}" + "".join(f"{name:>11}{'error':>8}" for name in sims))
    for name, m, of in figures:
        print(f"{name:<30}{m:>10.1f}" + "".join(f"{of(o):>11.1f}{(of(o) - m) / m * 100:>7.1f}%" for o in sims.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
