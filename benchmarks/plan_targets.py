"""`eaas plan`'s targets, one run: 24 h of BurstGPT-shaped traffic on a DeepSeek-V3-shaped deployment.

Prints, for the CLI's defaults (plus any `eaas plan` flags given):
- wall time of the replay (target: 24 h simulates in < 60 s; `eaas plan` replays 4 times: the ample
  pass that sizes static, then static, reactive, predictive);
- replica-seconds / static and tokens within the SLO per policy (targets: reactive <= 0.70, predictive
  <= 0.60 at >= 99%; predictive fewer SLO-violating tokens than reactive at no more cost);
- the frontier: both policies at headrooms 0.55..0.8 (the share of the SLO a full step takes at the target
  load), predictive's violating tokens at reactive's cost at each point, and the cheapest headroom at
  which reactive keeps 99% (how the default --headroom was chosen);
- predictive at --forecast-z -0.25, +0.05, +0.25 (how its default was chosen: the most that costs no more
  than reactive);
- served tokens lost to 1 replica failure per minute, per policy (target < 2%);
- co-hot (ExFlow-style) vs contiguous placement: RPCs per step and replica-seconds, reactive.

    .venv/bin/python -P benchmarks/plan_targets.py [eaas plan flags, e.g. --hours 6]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time


def main() -> int:
    from eaas.plan import cli
    from eaas.plan.planner import frontier, run_plan, summary, violations_at_cost
    from eaas.plan.simulator import Faults

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cli.configure(parser)
    args = parser.parse_args(sys.argv[1:])
    scenario = cli.build_scenario(args)
    started = time.perf_counter()
    base = run_plan(scenario)
    elapsed = time.perf_counter() - started
    table = summary(base)
    dep = scenario.deployment
    print(f"{len(scenario.trace)} requests over {scenario.trace.duration_s / 3600:.1f} h; {dep.experts} experts top-"
          f"{dep.top_k} x {dep.moe_layers} layers, {len(base.static_replicas)} groups, {dep.gateways} gateways; "
          f"SLO {scenario.slo_itl_s * 1e3:.0f} ms; target {base.target_per_replica:.0f} pairs/s per replica")
    print(f"replay wall time: {elapsed:.1f} s for 4 replays of {scenario.trace.duration_s / 3600:.1f} h "
          f"({elapsed / 4:.1f} s per replay; target < 60 s)")
    print(f"{'policy':<11}{'ratio':>7}{'SLO ok':>9}{'violating tokens':>18}{'ITL p99':>9}{'TTFT p99':>10}{'failed':>8}")
    for name, row in table.items():
        print(f"{name:<11}{row['ratio']:>7.3f}{row['slo_attainment'] * 100:>8.2f}%{row['slo_violating_tokens']:>18,}"
              f"{row['itl_p99_s']:>8.2f}s{row['ttft_p99_s']:>9.1f}s{row['failed_requests']:>8}")
    floor = base.ample
    print(f"{'ample':<11}{floor.replica_seconds / table['static']['static_replica_seconds']:>7.3f}"
          f"{floor.slo_attainment * 100:>8.2f}%{round(floor.served_tokens - floor.good_tokens):>18,}"
          f"{floor.itl_p99_s:>8.2f}s{floor.ttft_p99_s:>9.1f}s{floor.failed_requests:>8}"
          f"  (every group at --max-replicas: violations no replica count removes)")
    r, p = table["reactive"], table["predictive"]

    # the frontier: both policies at several standing headrooms (targets), against the same static
    curves = frontier(scenario, base)
    print("frontier (headroom: share of the SLO a full step takes at the target; predictive's violations "
          "interpolated along its own curve at reactive's cost):")
    print(f"{'headroom':>8}{'target':>8} | {'reactive':>8}{'SLO ok':>9}{'violating':>10} | {'predictive':>10}"
          f"{'SLO ok':>9}{'violating':>10} | {'pred. at reactive cost':>22}")
    for rp, pp in zip(curves["reactive"], curves["predictive"]):
        at = violations_at_cost(curves["predictive"], rp["ratio"])
        versus = f"{at:>12,.0f} ({(at / rp['violating_tokens'] - 1) * 100:+5.1f}%)" if at is not None else f"{'-':>22}"
        print(f"{rp['headroom']:>8.2f}{rp['target_x'] * base.target_per_replica:>8.0f} | {rp['ratio']:>8.3f}"
              f"{rp['slo_attainment'] * 100:>8.2f}%{rp['violating_tokens']:>10,.0f} | {pp['ratio']:>10.3f}"
              f"{pp['slo_attainment'] * 100:>8.2f}%{pp['violating_tokens']:>10,.0f} | {versus}")
    meeting = [q["headroom"] for q in curves["reactive"] if q["slo_attainment"] >= 0.99]
    margin = [q["headroom"] for q in curves["reactive"] if q["slo_attainment"] >= 0.991]
    print(f"cheapest headroom at which reactive keeps >= 99%: {max(meeting) if meeting else None}, >= 99.1% "
          f"(0.1 point margin): {max(margin) if margin else None} (default --headroom {scenario.headroom})")

    print(f"targets: reactive ratio <= 0.70 at >= 99%: {r['ratio'] <= 0.70 and r['slo_attainment'] >= 0.99}; "
          f"predictive <= 0.60 at >= 99%: {p['ratio'] <= 0.60 and p['slo_attainment'] >= 0.99}; "
          f"predictive fewer violating tokens at no more cost: "
          f"{p['slo_violating_tokens'] < r['slo_violating_tokens'] and p['ratio'] <= r['ratio']} "
          f"({p['slo_violating_tokens'] - r['slo_violating_tokens']:+,} tokens, ratio {p['ratio'] - r['ratio']:+.3f})")

    # predictive's own knob (burst headroom, in pooled relative standard deviations of the 10 s windows)
    sweep = [(p["ratio"], p["slo_violating_tokens"], scenario.forecast_z)]
    for z in (scenario.forecast_z - 0.25, scenario.forecast_z + 0.05, scenario.forecast_z + 0.25):
        row = summary(run_plan(dataclasses.replace(scenario, forecast_z=z), ("predictive",),
                               ample=base.ample))["predictive"]
        sweep.append((row["ratio"], row["slo_violating_tokens"], z))
    sweep.sort()
    print("predictive vs its burst headroom (default --forecast-z spends no more than reactive): "
          + "; ".join(f"z {z:.2f}: ratio {x:.3f}, {v:,} violating" for x, v, z in sweep)
          + f"; reactive: ratio {r['ratio']:.3f}, {r['slo_violating_tokens']:,} violating")

    faulty = run_plan(dataclasses.replace(scenario, faults=Faults(1.0, scenario.faults.request_timeout_s, 1)),
                      ample=base.ample)
    print("1 replica failure per minute (replaced after the start-up delay):")
    for name, o in faulty.outcomes.items():
        clean = base.outcomes[name]
        lost = 1 - o.served_tokens / clean.served_tokens
        lost_good = 1 - o.good_tokens / clean.good_tokens
        print(f"  {name:<11} served tokens lost {lost * 100:6.3f}%  within-SLO tokens lost {lost_good * 100:6.3f}%  "
              f"failed requests {o.failed_requests}  (target < 2%)")

    cohot = run_plan(dataclasses.replace(scenario, placement="cohot"), ("reactive",))
    contiguous = base if scenario.placement == "contiguous" else run_plan(
        dataclasses.replace(scenario, placement="contiguous"), ("reactive",))
    c, h = contiguous.outcomes["reactive"], cohot.outcomes["reactive"]
    print(f"placement (reactive): contiguous {c.replica_seconds / c.duration_s:.1f} replicas, "
          f"{contiguous.rpcs_per_step:.0f} RPCs/step, SLO {c.slo_attainment * 100:.2f}%; co-hot "
          f"{h.replica_seconds / h.duration_s:.1f} replicas, {cohot.rpcs_per_step:.0f} RPCs/step, "
          f"SLO {h.slo_attainment * 100:.2f}%; replica-seconds saved {(1 - h.replica_seconds / c.replica_seconds) * 100:.1f}%, "
          f"static sizes {contiguous.static_replicas.sum()} vs {cohot.static_replicas.sum()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
