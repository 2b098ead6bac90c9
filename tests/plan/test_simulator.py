"""Simulator sanity: ample capacity meets the SLO, removed capacity breaks it, the autoscaler follows load,
failures of a group's only replica fail requests, and the load windows count what was served."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from eaas.operator.autoscale import ScalingPolicy
from eaas.plan.placement import contiguous_placement, group_shares
from eaas.plan.policies import ReactivePolicy, StaticPolicy
from eaas.plan.popularity import skewed_popularity
from eaas.plan.simulator import Autoscaling, Deployment, Faults, StepModel, simulate, step_seconds
from eaas.plan.stalls import StepStalls
from eaas.plan.trace import Trace

DEP = Deployment(experts=16, top_k=2, moe_layers=4, experts_per_group=4, gateways=2, max_batch_per_gateway=64,
                 min_replicas=1, max_replicas=16, startup_s=30.0)
SLO = 0.05


def steady_trace(rate_per_s: float, seconds: int, response: int = 50) -> Trace:
    n = int(rate_per_s * seconds)
    arrival = np.arange(n) / rate_per_s
    return Trace(arrival, np.full(n, 20), np.full(n, response))


def shares(minutes: int) -> np.ndarray:
    popularity = skewed_popularity(DEP.experts, minutes, seed=1)
    return group_shares(popularity.shares, contiguous_placement(DEP.experts, DEP.experts_per_group))


def run(trace, replicas, policy=None, faults=Faults(), profile=None, seconds=None):
    initial = np.full(4, replicas)
    return simulate(trace, policy or StaticPolicy(initial), initial, shares(60), DEP, Autoscaling(1000.0),
                    profile, SLO, faults, duration_s=seconds)


def test_static_with_ample_capacity_serves_every_token_within_the_slo(profile):
    trace = steady_trace(20, 600)
    out = run(trace, 16, profile=profile, seconds=700)
    assert out.served_tokens == pytest.approx(trace.response_tokens.sum())
    assert out.slo_attainment == 1.0 and out.failed_requests == 0
    assert out.replica_seconds == 4 * 16 * 700
    assert out.itl_p99_s < SLO


def test_removing_capacity_breaks_the_slo_and_stretches_ttft(profile):
    # 8 gateways with full batches: one replica per group gets ~400-pair RPCs (4.5 ms), eight get ~50 (1 ms)
    dep = replace(DEP, gateways=8)
    trace = steady_trace(60, 300, response=500)
    ample, starved = (simulate(trace, StaticPolicy(np.full(4, r)), np.full(4, r), shares(60), dep,
                               Autoscaling(1000.0), profile, 0.015, duration_s=600) for r in (8, 1))
    assert ample.slo_attainment == 1.0
    assert starved.slo_attainment < 0.5
    assert starved.itl_p99_s > 2 * ample.itl_p99_s
    assert starved.ttft_p99_s > ample.ttft_p99_s


def test_a_step_waits_for_the_busiest_groups_replicas(profile):
    share = np.array([0.7, 0.1, 0.1, 0.1])
    one = step_seconds(64, share, np.array([1, 1, 1, 1]), DEP, profile)
    more = step_seconds(64, share, np.array([2, 1, 1, 1]), DEP, profile)
    cold = step_seconds(64, share, np.array([1, 2, 2, 2]), DEP, profile)
    assert more < one and cold == one
    assert step_seconds(64, share, np.array([1, 0, 1, 1]), DEP, profile) == float("inf")


def test_reactive_autoscaler_adds_replicas_when_load_rises_and_removes_them_after_the_window(profile):
    busy = steady_trace(60, 600)
    trace = Trace(busy.arrival_s + 300, busy.prompt_tokens, busy.response_tokens)  # quiet, busy, quiet
    policy = ReactivePolicy(ScalingPolicy(target_per_replica=2000.0, min_replicas=1, max_replicas=16,
                                          scale_down_window=120.0))
    out = simulate(trace, policy, np.ones(4, dtype=int), shares(60), DEP, Autoscaling(2000.0, scale_down_window_s=120),
                   profile, SLO, duration_s=1800)
    total = out.minute_replicas.sum(axis=1)
    assert total[2] == 4                      # quiet: every group at minReplicas
    assert total[10] > 8                      # busy: scaled up
    assert total[-1] == 4                     # quiet again, after the scale-down window
    load = out.window_loads.sum(axis=1)       # served (token, expert) pairs per 10 s window
    served_pairs = (out.served_tokens + trace.prompt_tokens.sum()) * DEP.top_k * DEP.moe_layers
    assert load.sum() == pytest.approx(served_pairs, rel=1e-6)


def test_failures_of_a_groups_only_replica_fail_requests_and_redundancy_mostly_avoids_it(profile):
    trace = steady_trace(5, 900, response=1000)  # ~7 s each: requests are in flight when a group dies
    single = run(trace, 1, faults=Faults(failures_per_minute=2.0, request_timeout_s=10.0, seed=3), profile=profile,
                 seconds=1000)
    double = run(trace, 2, faults=Faults(failures_per_minute=2.0, request_timeout_s=10.0, seed=3), profile=profile,
                 seconds=1000)
    assert single.failed_requests > 0
    assert double.failed_requests < single.failed_requests / 4  # both replicas down together is rarer
    assert double.served_tokens > single.served_tokens


def test_prompt_tokens_lengthen_the_gateways_part_of_the_step(profile):
    # the gateway curve grows with tokens: a step carrying a prompt chunk is slower than a decode-only one
    model = StepModel(np.full(4, 0.25), np.full(4, 16), DEP, profile)
    decode, with_prompt = model.seconds(8), model.seconds(8, 8 + 200)
    gateway_part = DEP.moe_layers * (profile.gateway_layer.at(208) - profile.gateway_layer.at(8))
    assert with_prompt - decode >= gateway_part > 0



def test_measured_stalls_stretch_the_tail_not_the_median(profile):
    trace = steady_trace(20, 120)
    calm = run(trace, 16, profile=profile, seconds=200)
    stalls = StepStalls([0.0] * 97 + [0.02] * 3)  # 3% of steps take 20 ms more, as a busy machine's do
    stalled = simulate(trace, StaticPolicy(np.full(4, 16)), np.full(4, 16), shares(60), DEP, Autoscaling(1000.0),
                       profile, SLO, duration_s=200, step_stalls=stalls)
    assert stalled.itl_p50_s == pytest.approx(calm.itl_p50_s, rel=0.05)
    assert stalled.itl_p99_s == pytest.approx(calm.itl_p99_s + 0.02, rel=0.1)


def test_stalls_are_drawn_per_step_not_per_tick():
    # a tick meets a step of length s + e in proportion to s + e: half the steps stalled by 3 s on a 1 s step
    # are 4/5 of the ticks
    stalls = StepStalls([0.0, 3.0], seed=3)
    draws = np.array([stalls.draw(1.0) for _ in range(20_000)])
    assert (draws == 3.0).mean() == pytest.approx(0.8, abs=0.02)
    assert StepStalls.from_gaps([0.1, 0.1, 0.1, 0.3, 0.001]).extra.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.2])


def test_the_per_tick_record_adds_up_to_the_outcome(profile):
    trace = steady_trace(20, 120)
    out = run(trace, 4, profile=profile, seconds=200)
    assert out.tick_tokens.sum() == pytest.approx(out.served_tokens)
    busy = out.tick_tokens > 0
    assert (out.tick_step_s[busy] > 0).all() and (out.tick_sequences[busy] >= 1).all()
    assert (out.tick_sequences[~busy] == 0).all()
    assert out.tick_sequences.max() <= DEP.gateways * DEP.max_batch_per_gateway
