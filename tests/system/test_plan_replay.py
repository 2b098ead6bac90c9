"""The planner's validation path end to end: a generated trace replayed against a real `eaas up` (each request
at its arrival time) streams every token, and the simulator replays the same trace to the same tokens.
The simulated-vs-measured figures are timing, so they live in benchmarks/plan_validation.py."""

from __future__ import annotations

import numpy as np
import pytest
from hf_checkpoints import write_hf_checkpoint

from eaas.plan.generator import TraceShape, generate_trace
from eaas.plan.policies import StaticPolicy
from eaas.plan.replay import replay
from eaas.plan.service import profile_from_dict
from eaas.plan.simulator import Autoscaling, Deployment, simulate


@pytest.mark.slow
def test_a_trace_replayed_on_eaas_up_and_in_the_simulator_serves_the_same_tokens(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=8)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=2)
    trace = generate_trace(TraceShape(hours=8 / 3600, rate_scale=1.0, max_prompt_tokens=8, max_response_tokens=12),
                           seed=2)
    assert len(trace) >= 5
    measured = replay(trace, fleet.gateways, timeout_s=120)
    assert measured.errors == []
    assert [len(t) for t in measured.token_times] == trace.response_tokens.tolist()
    assert all(np.all(np.diff(t) >= 0) for t in measured.token_times)
    assert measured.throughput() > 0 and measured.itl_quantile(0.99) >= measured.itl_quantile(0.5) > 0

    table = profile_from_dict({"expert_call_s": {"batch": [1, 64], "seconds": [0.005, 0.01]},
                               "gateway_layer_s": {"batch": [1, 64], "seconds": [0.005, 0.01]}})
    dep = Deployment(experts=8, top_k=2, moe_layers=2, experts_per_group=4, gateways=1, min_replicas=2,
                     max_replicas=2)
    sim = simulate(trace, StaticPolicy(np.array([2, 2])), np.array([2, 2]), np.full((2, 2), 0.5), dep,
                   Autoscaling(1e9), table, slo_itl_s=1.0, duration_s=trace.duration_s + 30, tick_s=0.01)
    assert sim.served_tokens == pytest.approx(measured.tokens)
    assert sim.last_token_s > trace.duration_s
