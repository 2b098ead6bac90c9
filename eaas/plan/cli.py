"""`eaas plan`: replay a request trace against a simulated deployment under static, reactive and predictive
replica policies, stepping the operator's own autoscaler; prints cost and latency per policy."""

from __future__ import annotations

import argparse
import json
import sys
import time

from eaas.errors import UserError
from eaas.operator.forecast import ForecastSettings
from eaas.plan.planner import DEFAULT_HEADROOM


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """States each real default; flags without one (None, off) say what happens instead, in their help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = _DefaultsFormatter
    w = p.add_argument_group("workload")
    w.add_argument("--trace", metavar="FILE", help="BurstGPT CSV (default: a generated BurstGPT-shaped trace)")
    w.add_argument("--hours", type=float, default=24.0, help="length of the generated trace")
    w.add_argument("--rate-scale", type=float, default=1.0,
                   help="generated trace: x BurstGPT's 2 requests/s mean rate")
    w.add_argument("--burst-correlation", type=float, default=0.0,
                   help="generated trace: AR(1) coefficient of each minute's rate step (0: independent minutes; "
                        "0.9: bursts last ~10 min)")
    w.add_argument("--seed", type=int, default=0, help="seed of the generated trace, popularity and failures")
    w.add_argument("--routing-stats", metavar="FILE",
                   help="expert popularity recorded by `eaas routing-stats` (default: the built-in skew model)")
    d = p.add_argument_group("deployment (default: DeepSeek-V3-shaped)")
    d.add_argument("--experts", type=int, default=256, help="routed experts per MoE layer")
    d.add_argument("--top-k", type=int, default=8, help="experts per token per layer")
    d.add_argument("--moe-layers", type=int, default=58, help="MoE layers")
    d.add_argument("--experts-per-group", type=int, default=8, help="experts per group (expertsPerReplica)")
    d.add_argument("--placement", choices=("contiguous", "cohot"), default="contiguous",
                   help="contiguous ids (the operator today) or co-hot experts grouped (ExFlow-style)")
    d.add_argument("--gateways", type=int, default=64, help="gateway processes (fixed)")
    d.add_argument("--max-batch", type=int, default=64, help="concurrent sequences per gateway")
    d.add_argument("--min-replicas", type=int, default=2,
                   help="per group (2: one failure never leaves a group without a replica)")
    d.add_argument("--max-replicas", type=int, default=64, help="per group")
    d.add_argument("--startup-s", type=float, default=60.0, help="replica start-up delay (load weights, register)")
    d.add_argument("--profile", metavar="FILE",
                   help="service-rate profile JSON (default: eaas/plan/profiles/cpu-mixtral-h512.json, measured here)")
    a = p.add_argument_group("autoscaling (the operator's fields)")
    a.add_argument("--policies", default="static,reactive,predictive", help="comma-separated")
    a.add_argument("--slo-itl-ms", type=float,
                   help="inter-token latency SLO (default: twice a full batch's step with a replica per gateway, "
                        "from the profile)")
    a.add_argument("--target-per-replica", type=float,
                   help="targetTokensPerSecondPerReplica (default: the load at which a full step takes --headroom "
                        "x the SLO, from the profile)")
    a.add_argument("--headroom", type=float, default=DEFAULT_HEADROOM,
                   help="share of the SLO a full gateway's step takes at the target load (sets the default target; "
                        "chosen by the sweep in benchmarks/plan_targets.py)")
    a.add_argument("--interval-s", type=float, default=15.0, help="intervalSeconds")
    a.add_argument("--load-windows", type=int, default=3, help="loadWindows (10 s each)")
    a.add_argument("--scale-up-window-s", type=float, default=0.0, help="scaleUpStabilizationSeconds")
    a.add_argument("--scale-down-window-s", type=float, default=300.0, help="scaleDownStabilizationSeconds")
    a.add_argument("--forecast-z", type=float, default=ForecastSettings.burst_z,
                   help="predictive: burst headroom in pooled relative std devs")
    f = p.add_argument_group("faults")
    f.add_argument("--failures-per-minute", type=float, default=0.0, help="replica failures injected")
    f.add_argument("--request-timeout-s", type=float, default=30.0,
                   help="a request fails after its steps stall this long (a group without replicas)")
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="print one JSON object keyed by policy")
    o.add_argument("--report", metavar="DIR", help="write PNG plots and index.html to DIR (replays again at 5 more "
                   "headrooms per policy for the cost-vs-SLO frontier)")
    o.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def build_scenario(args):
    import math

    from eaas.plan.generator import TraceShape, generate_trace
    from eaas.plan.planner import Scenario, default_slo_s, target_per_replica
    from eaas.plan.popularity import SkewModel, read_routing_stats, recorded_popularity, skewed_popularity
    from eaas.plan.service import DEFAULT_PROFILE, load_profile
    from eaas.plan.simulator import Autoscaling, Deployment, Faults
    from eaas.plan.trace import read_burstgpt_csv

    for name in ("experts", "top_k", "moe_layers", "experts_per_group", "gateways", "max_batch", "min_replicas"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be >= 1")
    if not 0 <= args.burst_correlation < 1:
        raise UserError("--burst-correlation must be in [0, 1)")
    if args.top_k > args.experts or args.min_replicas > args.max_replicas:
        raise UserError("need --top-k <= --experts and --min-replicas <= --max-replicas")
    trace = read_burstgpt_csv(args.trace) if args.trace else generate_trace(
        TraceShape(hours=args.hours, rate_scale=args.rate_scale, minute_correlation=args.burst_correlation),
        seed=args.seed)
    minutes = int(math.ceil((trace.duration_s + 1) / 60)) + 1
    if args.routing_stats:
        popularity = recorded_popularity(read_routing_stats(args.routing_stats), args.experts, minutes)
    else:
        popularity = skewed_popularity(args.experts, minutes, SkewModel(cluster_size=args.experts_per_group),
                                       seed=args.seed)
    profile = load_profile(args.profile or DEFAULT_PROFILE)
    dep = Deployment(experts=args.experts, top_k=args.top_k, moe_layers=args.moe_layers,
                     experts_per_group=args.experts_per_group, gateways=args.gateways,
                     max_batch_per_gateway=args.max_batch, min_replicas=args.min_replicas,
                     max_replicas=args.max_replicas, startup_s=args.startup_s)
    slo = args.slo_itl_ms / 1e3 if args.slo_itl_ms else default_slo_s(profile, dep)
    if not 0 < args.headroom <= 1:
        raise UserError("--headroom must be in (0, 1]")
    target = args.target_per_replica or target_per_replica(profile, dep, slo, args.headroom)
    scaling = Autoscaling(target_per_replica=target, interval_s=args.interval_s, load_windows=args.load_windows,
                          scale_up_window_s=args.scale_up_window_s, scale_down_window_s=args.scale_down_window_s)
    return Scenario(trace, popularity, profile, dep, scaling, slo, args.placement,
                    Faults(args.failures_per_minute, args.request_timeout_s, args.seed), args.forecast_z,
                    None if args.target_per_replica else args.headroom)


def run(args) -> int:
    from eaas.plan.planner import run_plan, summary

    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    started = time.perf_counter()
    scenario = build_scenario(args)
    progress = None
    if not args.no_progress:
        from tqdm import tqdm

        total = int(scenario.trace.duration_s) + 1
        progress = lambda name: tqdm(total=total, desc=f"replay {name}", unit="sim-s", file=sys.stderr,  # noqa: E731
                                     leave=False, mininterval=1.0)
    result = run_plan(scenario, policies, progress)
    table = summary(result)
    elapsed = time.perf_counter() - started
    if args.report:
        from eaas.plan.planner import frontier
        from eaas.plan.report import write_report

        curves = frontier(scenario, result, policies=[p for p in policies if p != "static"]) \
            if any(p != "static" for p in policies) else None
        write_report(args.report, scenario, result, table, curves)
    if args.json:
        print(json.dumps(table, indent=1))
        return 0
    print(f"trace: {len(scenario.trace)} requests over {scenario.trace.duration_s / 3600:.2f} h; "
          f"{scenario.deployment.experts} experts, top-{scenario.deployment.top_k}, "
          f"{scenario.deployment.moe_layers} MoE layers, {len(result.static_replicas)} groups ({scenario.placement}); "
          f"target {result.target_per_replica:.0f} pairs/s per replica; SLO {scenario.slo_itl_s * 1e3:.0f} ms; "
          f"profile {scenario.profile.name}; {elapsed:.1f} s")
    print(f"{'policy':<11}{'ratio':>7}{'replicas':>10}{'SLO ok':>9}{'ITL p99':>10}{'TTFT p99':>10}{'failed':>8}")
    for name, row in table.items():
        print(f"{name:<11}{row['ratio']:>7.3f}{row['mean_replicas']:>10.1f}{row['slo_attainment'] * 100:>8.2f}%"
              f"{row['itl_p99_s'] * 1e3:>8.0f}ms{row['ttft_p99_s']:>9.2f}s{row['failed_requests']:>8}")
    if args.report:
        print(f"report: {args.report}/index.html")
    return 0
