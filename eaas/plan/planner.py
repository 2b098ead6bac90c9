"""One planning run: build the scenario (trace, popularity, placement, profile), replay it under each policy.

Static is peak provisioning: each group gets enough replicas for the highest load the autoscaler would
read from it (its busiest `load_windows` windows) in a replay with every group at maxReplicas.
The frontier replays reactive and predictive at several standing headrooms (targets), so that one policy
beating another is shown along the cost-vs-SLO curve, not at one tuned point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from eaas.errors import UserError
from eaas.operator.autoscale import ScalingPolicy
from eaas.operator.forecast import ForecastSettings, predictive_policy
from eaas.plan.placement import (contiguous_placement, cohot_placement, group_affinity, group_shares,
                                 groups_hit_per_layer)
from eaas.plan.policies import PredictivePolicy, ReactivePolicy, StaticPolicy
from eaas.plan.popularity import Popularity
from eaas.plan.service import ServiceProfile
from eaas.plan.simulator import LOAD_BUCKET_S, Autoscaling, Deployment, Faults, Outcome, simulate
from eaas.plan.trace import Trace

POLICIES = ("static", "reactive", "predictive")
# The share of the SLO a full gateway's step takes at the target load (target_per_replica): chosen by the
# headroom sweep in benchmarks/plan_targets.py, the cheapest one at which reactive keeps >= 99.1% of tokens
# within the SLO on the default 24 h trace (the 99% target with a 0.1 point margin; 0.8 kept 98.95%).
DEFAULT_HEADROOM = 0.65
FRONTIER_HEADROOMS = (0.55, 0.6, 0.65, 0.7, 0.75, 0.8)


@dataclass(frozen=True)
class Scenario:
    trace: Trace
    popularity: Popularity
    profile: ServiceProfile
    deployment: Deployment
    autoscaling: Autoscaling
    slo_itl_s: float
    placement: str = "contiguous"
    faults: Faults = Faults()
    forecast_z: float = ForecastSettings.burst_z
    headroom: float | None = DEFAULT_HEADROOM  # what the target was derived from; None: given by the user


@dataclass
class PlanResult:
    outcomes: dict[str, Outcome]
    static_replicas: np.ndarray
    group_of: np.ndarray
    rpcs_per_step: float
    target_per_replica: float
    ample: Outcome | None = None


def default_slo_s(profile: ServiceProfile, dep: Deployment, multiple: float = 2.0) -> float:
    """The inter-token SLO a profile supports: `multiple` x the step of a full gateway batch when every group
    has a replica per gateway (each RPC then carries only the gateway's own share of the batch's pairs, so
    experts are as fast as this hardware makes them). Sharing replicas may at most double it."""
    groups = max(1, dep.experts // dep.experts_per_group)
    pairs = max(1.0, dep.max_batch_per_gateway * dep.top_k / groups)
    step = dep.moe_layers * (profile.gateway_layer.at(dep.max_batch_per_gateway) + profile.expert_call.at(pairs))
    return multiple * step


def target_per_replica(profile: ServiceProfile, dep: Deployment, slo_itl_s: float,
                       headroom: float = DEFAULT_HEADROOM) -> float:
    """Load (pairs/s, summed over layers) per replica at which a full gateway's step takes headroom x SLO.

    A step is moe_layers x (gateway time at a full batch + the RPC time at per-call batch b); a replica at
    per-call batch b serves b x moe_layers pairs per step.
    """
    budget = headroom * slo_itl_s / dep.moe_layers - float(profile.gateway_layer(dep.max_batch_per_gateway))
    batches = np.arange(1, 1 << 16, dtype=np.float64)
    fits = batches[profile.expert_call(batches) <= budget]
    if not len(fits):
        raise UserError(f"the SLO ({slo_itl_s * 1e3:.0f} ms per token) is below one step's floor with this profile "
                        f"({dep.moe_layers} layers); raise --slo-itl-ms or lower --max-batch")
    return float(fits[-1] * dep.moe_layers / (headroom * slo_itl_s))


def placement_of(scenario: Scenario) -> np.ndarray:
    dep = scenario.deployment
    if scenario.placement == "cohot":
        return cohot_placement(scenario.popularity.history, dep.experts_per_group)
    return contiguous_placement(dep.experts, dep.experts_per_group)


def peak_window_loads(outcome_buckets: np.ndarray, windows: int) -> np.ndarray:
    kernel = np.ones(windows) / (LOAD_BUCKET_S * windows)
    return np.array([np.convolve(outcome_buckets[:, g], kernel, mode="valid").max()
                     for g in range(outcome_buckets.shape[1])])


def run_plan(scenario: Scenario, policies=POLICIES, progress_factory=None, ample: Outcome | None = None) -> PlanResult:
    """Replay each policy; `ample` (a previous plan's ample pass on the same trace) skips that pass."""
    dep, scaling = scenario.deployment, scenario.autoscaling
    group_of = placement_of(scenario)
    shares = group_shares(scenario.popularity.shares, group_of)
    groups = shares.shape[1]
    policy = ScalingPolicy(target_per_replica=scaling.target_per_replica, min_replicas=dep.min_replicas,
                           max_replicas=dep.max_replicas, scale_up_window=scaling.scale_up_window_s,
                           scale_down_window=scaling.scale_down_window_s)

    def replay(p, initial, faults=scenario.faults):
        bar = progress_factory(p.name) if progress_factory else None
        try:
            return simulate(scenario.trace, p, initial, shares, dep, scaling, scenario.profile, scenario.slo_itl_s,
                            faults, progress=bar)
        finally:
            if bar is not None:
                bar.close()

    if ample is None:
        ample = replay(StaticPolicy(np.full(groups, dep.max_replicas), name="ample"),
                       np.full(groups, dep.max_replicas), Faults(0.0, scenario.faults.request_timeout_s))
    peak = peak_window_loads(ample.window_loads, scaling.load_windows)
    static = np.clip(np.ceil(peak / scaling.target_per_replica), dep.min_replicas, dep.max_replicas).astype(np.int64)
    outcomes = {}
    for name in policies:
        if name == "static":
            outcomes[name] = replay(StaticPolicy(static), static)
        elif name == "reactive":
            outcomes[name] = replay(ReactivePolicy(policy), static)
        elif name == "predictive":
            horizon = dep.startup_s + scaling.interval_s
            affinity = group_affinity(scenario.popularity.history.mean(axis=0), group_of,
                                      scenario.popularity.cluster_of, scenario.popularity.affinity)
            outcomes[name] = replay(PredictivePolicy(predictive_policy(policy, horizon), forecast=ForecastSettings(
                horizon_s=horizon, burst_z=scenario.forecast_z), affinity=affinity), static)
        else:
            raise UserError(f"unknown policy {name!r}; choose from {', '.join(POLICIES)}")
    mean_shares = scenario.popularity.shares.mean(axis=0)
    rpcs = dep.moe_layers * groups_hit_per_layer(max(1.0, ample.mean_batch_per_gateway), dep.top_k, mean_shares,
                                                 group_of, scenario.popularity.cluster_of,
                                                 scenario.popularity.affinity)
    return PlanResult(outcomes, static, group_of, rpcs, scaling.target_per_replica, ample)


def summary(result: PlanResult) -> dict[str, dict]:
    """The --json object: one entry per policy."""
    out = {}
    for name, o in result.outcomes.items():
        static_rs = float(result.static_replicas.sum() * o.duration_s)
        out[name] = {
            "replica_seconds": round(o.replica_seconds, 1),
            "static_replica_seconds": round(static_rs, 1),
            "ratio": round(o.replica_seconds / static_rs, 4) if static_rs else math.nan,
            "slo_attainment": round(o.slo_attainment, 5),
            "ttft_p99_s": round(o.ttft_p99_s, 4),
            "itl_p99_s": round(o.itl_p99_s, 4),
            "failed_requests": int(o.failed_requests),
            "served_tokens": round(o.served_tokens),
            "slo_violating_tokens": round(o.served_tokens - o.good_tokens),
            "mean_replicas": round(o.replica_seconds / o.duration_s, 2),
            "rpcs_per_step": round(result.rpcs_per_step, 1),
        }
    return out


def with_headroom(scenario: Scenario, headroom: float) -> Scenario:
    """The scenario with targetTokensPerSecondPerReplica derived from another headroom."""
    target = target_per_replica(scenario.profile, scenario.deployment, scenario.slo_itl_s, headroom)
    return replace(scenario, headroom=headroom, autoscaling=replace(scenario.autoscaling, target_per_replica=target))


def frontier(scenario: Scenario, base: PlanResult, headrooms=FRONTIER_HEADROOMS, multipliers=(0.6, 0.8, 1.25, 1.6),
             policies=("reactive", "predictive")) -> dict[str, list[dict]]:
    """Cost vs SLO per policy as its standing headroom varies, against the base plan's static replica-seconds.

    With a derived target (scenario.headroom set): one point per headroom (the base plan's among them); with a
    target given by the user: the target x multipliers (and x1, the base plan). Each point: headroom (or None),
    target_x (x the base target), ratio, slo_attainment, violating_tokens.
    """
    static_rs = float(base.static_replicas.sum() * next(iter(base.outcomes.values())).duration_s)
    base_target = scenario.autoscaling.target_per_replica
    if scenario.headroom is not None:
        variants = [(h, with_headroom(scenario, h)) for h in sorted(set(headrooms) | {scenario.headroom})]
    else:
        variants = [(None, replace(scenario, autoscaling=replace(scenario.autoscaling, target_per_replica=base_target * m)))
                    for m in sorted(set(multipliers) | {1.0})]
    points: dict[str, list[dict]] = {p: [] for p in policies}
    for headroom, variant in variants:
        target = variant.autoscaling.target_per_replica
        same = headroom == scenario.headroom if headroom is not None else target == base_target
        outcomes = base.outcomes if same and all(p in base.outcomes for p in policies) else \
            run_plan(variant, policies, ample=base.ample).outcomes
        for p in policies:
            o = outcomes[p]
            points[p].append({"headroom": headroom, "target_x": round(target / base_target, 4),
                              "ratio": o.replica_seconds / static_rs, "slo_attainment": o.slo_attainment,
                              "violating_tokens": o.served_tokens - o.good_tokens})
    return points


def violations_at_cost(points: list[dict], ratio: float) -> float | None:
    """Violating tokens interpolated along one policy's frontier at a given cost (None outside its range)."""
    pts = sorted((p["ratio"], p["violating_tokens"]) for p in points)
    if not pts or not pts[0][0] <= ratio <= pts[-1][0]:
        return None
    return float(np.interp(ratio, [x for x, _ in pts], [v for _, v in pts]))
