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
        [--replays 3] [--save FILE | --measured FILE]
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
RPC_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)  # eaas.rpc


def histogram(url: str, name: str, bounds) -> list[float]:
    """A histogram's cumulative bucket counts (le=each bound, then +Inf)."""
    return [metric(url, f'{name}_bucket{{le="{float(b)}"}}') for b in bounds] + [metric(url, f'{name}_bucket{{le="+Inf"}}')]


def one_stream_gaps(gateways: list[str], tokens: int = 300) -> list[float]:
    """Inter-token gaps of one stream alone (each one step at batch 1): the step's own spread."""
    from eaas.client import SyncClient

    marks = []
    with SyncClient(gateways, timeout=300) as client:
        for chunk in client.generate_stream(prompt_ids=[7, 8, 9], max_tokens=tokens, ignore_eos=True):
            marks.extend([time.perf_counter()] * len(chunk.token_ids))
    return [b - a for a, b in zip(marks[8:], marks[9:])]


def histogram_quantile(cumulative: list[float], q: float, bounds=ITL_BUCKETS) -> float:
    """Prometheus' histogram_quantile: linear within the bucket holding the q-th observation."""
    total = cumulative[-1]
    if total <= 0:
        return 0.0
    rank, lower, below = q * total, 0.0, 0.0
    for bound, count in zip(bounds, cumulative):
        if count >= rank:
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-12)
        lower, below = bound, count
    return bounds[-1]


class GaugeSampler:
    """Samples the gateway's running batch and queue every `period` s while a replay runs (what the real
    system's step was working on when a gap was long)."""

    def __init__(self, url: str, period: float = 0.25):
        import threading

        self.url, self.period, self.samples = url, period, []  # (perf_counter, running, waiting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.samples.append((time.perf_counter(), metric(self.url, "eaas_gateway_running_sequences"),
                                     metric(self.url, "eaas_gateway_queue_depth")))
            except OSError:
                pass

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def measure_replay(fleet, trace) -> dict:
    """One replay of the trace on the running fleet, with the gateway's own ITL and RPC histograms over it and
    its running batch sampled."""
    from eaas.plan.replay import replay

    itl_name, rpc_name = "eaas_gateway_inter_token_latency_seconds", "eaas_gateway_expert_rpc_seconds"
    before = (histogram(fleet.http, itl_name, ITL_BUCKETS), histogram(fleet.http, rpc_name, RPC_BUCKETS),
              metric(fleet.http, "eaas_gateway_preemptions_total"))
    with GaugeSampler(fleet.http) as sampler:
        measured = replay(trace, fleet.gateways)
    after = (histogram(fleet.http, itl_name, ITL_BUCKETS), histogram(fleet.http, rpc_name, RPC_BUCKETS),
             metric(fleet.http, "eaas_gateway_preemptions_total"))
    return {"token_times": measured.token_times, "errors": measured.errors,
            "gateway_itl": [b - a for a, b in zip(before[0], after[0])],
            "gateway_rpc": [b - a for a, b in zip(before[1], after[1])], "preempted": after[2] - before[2],
            "running": [(t - measured.start, r, w) for t, r, w in sampler.samples]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="trace length")
    parser.add_argument("--rate-scale", type=float, default=6.0, help="x BurstGPT's 2 requests/s")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replays", type=int, default=3,
                        help="replays of the same trace on the same `eaas up`: the simulator is compared with their median")
    parser.add_argument("--save", metavar="FILE", help="write the calibration and measured token times as JSON")
    parser.add_argument("--measured", metavar="FILE", help="skip eaas up: compare with a --save file instead")
    parser.add_argument("--tick-ms", type=float, default=10.0, help="the simulator's time step (steps here: 30-200 ms)")
    args = parser.parse_args()

    import numpy as np

    from eaas.plan.generator import TraceShape, generate_trace
    from eaas.plan.policies import StaticPolicy
    from eaas.plan.replay import ReplayResult
    from eaas.plan.service import profile_from_dict
    from eaas.plan.simulator import Autoscaling, Deployment, simulate
    from eaas.plan.stalls import StepStalls

    trace = generate_trace(TraceShape(hours=args.seconds / 3600, rate_scale=args.rate_scale, day_amplitude=0.0,
                                      max_prompt_tokens=32, max_response_tokens=64), seed=args.seed)
    print(f"trace: {len(trace)} requests over {trace.duration_s:.0f} s, {int(trace.response_tokens.sum())} "
          f"response tokens, prompts {int(trace.prompt_tokens.sum())} tokens", flush=True)
    if args.measured:
        saved = json.loads(Path(args.measured).read_text())
        replays = saved.get("replays") or [{"token_times": saved["token_times"], "errors": saved["errors"],
                                            "gateway_itl": saved.get("gateway_itl")}]
    else:
        fleet = up_fleet(profile_model())
        try:
            streams, steps, rpcs = step_sweep(fleet, 2, CALIBRATION)
            gaps = one_stream_gaps(fleet.gateways)
            replays = []
            for i in range(args.replays):
                started = time.perf_counter()
                replays.append(measure_replay(fleet, trace))
                print(f"replay {i + 1}: {time.perf_counter() - started:.1f} s, errors {len(replays[-1]['errors'])}, "
                      f"preemptions (KV cache full) {replays[-1]['preempted']:.0f}", flush=True)
        finally:
            fleet.stop()
        saved = {"streams": streams, "steps": steps, "rpcs": rpcs, "one_stream_gaps": gaps, "replays": replays}
        if args.save:
            Path(args.save).write_text(json.dumps(saved))
    streams, steps, rpcs, gaps = saved["streams"], saved["steps"], saved["rpcs"], saved.get("one_stream_gaps") or []
    for n, st, r in zip(streams, steps, rpcs):
        print(f"calibration: {n:3.0f} streams  step {st * 1e3:7.2f} ms  Combine RPC {r * 1e3:6.2f} ms", flush=True)
    # the simulator's per-RPC batch for N streams here: N x 1 gateway x top-2 x share 1/2 / 1 RPC at a time = N
    profile = profile_from_dict({"name": "this run", "expert_call_s": {"batch": streams, "seconds": rpcs},
                                 "gateway_layer_s": {"batch": streams, "seconds": gateway_layer_seconds(steps, rpcs)}})
    # at most 64 requests in flight: the replay's cap per connection (eaas/plan/replay.py)
    dep = Deployment(experts=8, top_k=2, moe_layers=4, experts_per_group=4, gateways=1, max_batch_per_gateway=64,
                     min_replicas=2, max_replicas=2, startup_s=0.0, prefill_chunk_tokens=2048)
    shares = np.full((int(trace.duration_s) // 60 + 2, 2), 0.5)
    runs = {"simulated": None}
    if len(gaps) >= 8:  # the step's own spread at a fixed batch, from one stream alone (eaas/plan/stalls.py)
        runs["+stalls"] = StepStalls.from_gaps(gaps, seed=args.seed)
        extra = runs["+stalls"].extra
        print(f"one stream alone: {len(gaps)} gaps, p50 {np.median(gaps) * 1e3:.1f} ms; extra over it p90 "
              f"{np.quantile(extra, 0.9) * 1e3:.1f} ms, p99 {np.quantile(extra, 0.99) * 1e3:.1f} ms")
    sims = {name: simulate(trace, StaticPolicy(np.array([2, 2])), np.array([2, 2]), shares, dep, Autoscaling(1e9),
                           profile, slo_itl_s=1.0, duration_s=trace.duration_s + 120, tick_s=args.tick_ms / 1e3,
                           step_stalls=stalls) for name, stalls in runs.items()}
    measured = [ReplayResult(0.0, r["token_times"], r["errors"]) for r in replays]
    figures = [("throughput, tokens/s", [m.throughput() for m in measured], lambda o: o.served_tokens / o.last_token_s),
               ("p99 inter-token latency, ms", [m.itl_quantile(0.99) * 1e3 for m in measured],
                lambda o: o.itl_p99_s * 1e3),
               ("p50 inter-token latency, ms", [m.itl_quantile(0.5) * 1e3 for m in measured],
                lambda o: o.itl_p50_s * 1e3)]
    if all(r.get("gateway_itl") for r in replays):
        figures += [("p99 ITL in the gateway, ms", [histogram_quantile(r["gateway_itl"], 0.99) * 1e3 for r in replays],
                     lambda o: o.itl_p99_s * 1e3),
                    ("p50 ITL in the gateway, ms", [histogram_quantile(r["gateway_itl"], 0.5) * 1e3 for r in replays],
                     lambda o: o.itl_p50_s * 1e3)]
    print(f"measured tokens per replay {[m.tokens for m in measured]}, simulated {sims['simulated'].served_tokens:.0f}")
    print(f"{'figure':<30}" + "".join(f"{'run ' + str(i + 1):>9}" for i in range(len(measured)))
          + f"{'median':>9}{'spread':>8}" + "".join(f"{name:>11}{'error':>8}" for name in sims))
    for name, values, of in figures:
        mid = float(np.median(values))
        spread = (max(values) - min(values)) / mid * 100 if mid else 0.0
        print(f"{name:<30}" + "".join(f"{v:>9.1f}" for v in values) + f"{mid:>9.1f}{spread:>7.0f}%"
              + "".join(f"{of(o):>11.1f}{(of(o) - mid) / mid * 100:>7.1f}%" for o in sims.values()))
    # what the real tail consists of: the batch the gateway ran and its Combine RPCs, next to the simulator's
    sim = sims["simulated"]
    busy = sim.tick_tokens > 0
    print(f"simulated: sequences per step p50 {weighted(sim.tick_sequences, sim.tick_tokens, 0.5):.0f}, "
          f"p99 {weighted(sim.tick_sequences, sim.tick_tokens, 0.99):.0f} (token-weighted); busy {busy.sum() * args.tick_ms / 1e3:.1f} s")
    for i, r in enumerate(replays):
        if not r.get("running"):
            continue
        running = np.asarray([x[1] for x in r["running"]])
        waiting = np.asarray([x[2] for x in r["running"]])
        busy_r = running > 0
        rpc = r.get("gateway_rpc")
        rpc_part = (f"Combine RPC p50 {histogram_quantile(rpc, 0.5, RPC_BUCKETS) * 1e3:.1f} ms, p99 "
                    f"{histogram_quantile(rpc, 0.99, RPC_BUCKETS) * 1e3:.1f} ms; " if rpc else "")
        print(f"replay {i + 1}: running sequences p50 {np.median(running[busy_r]):.0f}, p99 "
              f"{np.quantile(running[busy_r], 0.99):.0f}, queue max {waiting.max():.0f}; {rpc_part}"
              f"busy {busy_r.sum() * 0.25:.1f} s; calibrated step at its p99 batch "
              f"{float(np.interp(np.quantile(running[busy_r], 0.99), streams, steps)) * 1e3:.0f} ms")
        print_gap_decomposition(r, streams, steps)
    return 0


def print_gap_decomposition(replay: dict, streams, steps) -> None:
    """Each measured gap next to the calibrated step at the batch the gateway ran then (its running gauge): is
    the tail a bigger batch (gap ~ the step at that batch), or the same step taking longer (and by a ratio, or
    by an added stall)?"""
    import numpy as np

    samples = np.asarray(replay["running"])
    gaps, batch = [], []
    for times in replay["token_times"]:
        t = np.asarray(times)
        if len(t) < 2:
            continue
        g, at = np.diff(t), t[1:]
        keep = g > 1e-3  # tokens delivered together are one step's
        gaps.append(g[keep])
        batch.append(np.interp(at[keep], samples[:, 0], samples[:, 1]))
    gaps, batch = np.concatenate(gaps), np.concatenate(batch)
    model = np.interp(batch, streams, steps)
    for lo, hi in ((1, 8), (8, 16), (16, 32), (32, 65)):
        m = (batch >= lo) & (batch < hi)
        if m.sum() < 50:
            continue
        print(f"    batch {lo:2d}-{hi - 1:2d}: {m.sum():5d} gaps; calibrated step {np.median(model[m]) * 1e3:5.0f} ms, gap p50 "
              f"{np.median(gaps[m]) * 1e3:5.0f} p99 {np.quantile(gaps[m], 0.99) * 1e3:5.0f} ms; gap / step p99 "
              f"{np.quantile(gaps[m] / model[m], 0.99):4.2f}, gap - step p99 {np.quantile(gaps[m] - model[m], 0.99) * 1e3:5.0f} ms")


def weighted(values, weights, q):
    from eaas.plan.simulator import weighted_quantile

    return weighted_quantile(values, weights, q)


if __name__ == "__main__":
    sys.exit(main())
