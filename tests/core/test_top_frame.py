"""`eaas top`'s frame is a pure function of two metric readings (and the Redis facts): rates, per-expert bars,
replicas per group, and what it says when it has less to go on."""

from __future__ import annotations

import pytest

from eaas.top.render import bar, render_frame
from eaas.top.snapshot import merged, parse_metrics
from eaas.top.sources import metrics_url
from eaas.top.view import RedisFacts, top_view


def exposition(tokens: float, routed: dict[int, float], rpc_count=0.0, rpc_sum=0.0, failures=0.0, ttft=(0, 0.0)) -> str:
    """Prometheus text as a gateway writes it (the fields `eaas top` reads)."""
    lines = [
        "# TYPE eaas_gateway_generated_tokens_total counter", f"eaas_gateway_generated_tokens_total {tokens}",
        "# TYPE eaas_gateway_running_sequences gauge", "eaas_gateway_running_sequences 3",
        "# TYPE eaas_gateway_queue_depth gauge", "eaas_gateway_queue_depth 1",
        "# TYPE eaas_gateway_requests_total counter", 'eaas_gateway_requests_total{status="ok"} 10',
        'eaas_gateway_requests_total{status="cancelled"} 1',
        "# TYPE eaas_gateway_requests_refused_total counter", "eaas_gateway_requests_refused_total 2",
        "# TYPE eaas_gateway_preemptions_total counter", "eaas_gateway_preemptions_total 0",
        "# TYPE eaas_gateway_kv_blocks_used gauge", "eaas_gateway_kv_blocks_used 30",
        "# TYPE eaas_gateway_kv_blocks_free gauge", "eaas_gateway_kv_blocks_free 70",
        "# TYPE eaas_gateway_time_to_first_token_seconds histogram",
        f"eaas_gateway_time_to_first_token_seconds_count {ttft[0]}", f"eaas_gateway_time_to_first_token_seconds_sum {ttft[1]}",
        "# TYPE eaas_gateway_expert_rpc_seconds histogram",
        f"eaas_gateway_expert_rpc_seconds_count {rpc_count}", f"eaas_gateway_expert_rpc_seconds_sum {rpc_sum}",
        "# TYPE eaas_gateway_expert_rpc_failures_total counter",
        f'eaas_gateway_expert_rpc_failures_total{{reason="unavailable"}} {failures}',
        "# TYPE eaas_mempool_hits_total counter", "eaas_mempool_hits_total 3",
        "# TYPE eaas_mempool_misses_total counter", "eaas_mempool_misses_total 1",
        "# TYPE eaas_gateway_tokens_routed_total counter",
        *[f'eaas_gateway_tokens_routed_total{{expert="{e}"}} {n}' for e, n in routed.items()],
        "# TYPE eaas_gateway_expert_replicas gauge",
        'eaas_gateway_expert_replicas{group="g1",experts="4-7",state="ready"} 1',
        'eaas_gateway_expert_replicas{group="g1",experts="4-7",state="quarantined"} 1',
        'eaas_gateway_expert_replicas{group="g0",experts="0-3",state="ready"} 2',
        'eaas_gateway_expert_replicas{group="g0",experts="0-3",state="quarantined"} 0',
    ]
    return "\n".join(lines) + "\n"


BEFORE = parse_metrics(exposition(100, {0: 100, 1: 50, 5: 10}, 40, 0.04, 1, (10, 1.0)), taken_at=10.0)
AFTER = parse_metrics(exposition(300, {0: 500, 1: 250, 5: 50}, 240, 0.44, 3, (30, 3.0)), taken_at=12.0)


def test_two_readings_give_rates_and_a_bar_per_expert_of_every_group():
    view = top_view(BEFORE, AFTER, "http://gw:8000")
    assert view.interval_s == 2.0 and view.tokens_per_s == 100.0 and view.rpc_per_s == 100.0
    assert view.rpc_mean_s == pytest.approx(0.002) and view.ttft_mean_s == pytest.approx(0.1)
    assert view.rpc_failures_in_interval == 2 and view.rpc_failures == {"unavailable": 3}
    # experts 2-4, 6, 7 saw no token but are held by a group: they get an empty bar
    assert view.expert_load == {0: 200.0, 1: 100.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 20.0, 6: 0.0, 7: 0.0}
    frame = render_frame(view, "2026-12-01 05:00:00", width=60)
    assert frame.splitlines()[:8] == [
        "eaas top · http://gw:8000 · 2026-12-01 05:00:00 · rates over 2.0 s",
        "tokens/s       100.0    requests: running 3, queued 1, refused 2, finished 1 cancelled, 10 ok",
        "latency     TTFT 100.0 ms, ITL - (means over the interval)",
        "KV blocks   30 used / 70 free (30.0 %), preemptions 0, MemPool hits 75.0 % of 4 blocks",
        "expert RPC  100.0/s, mean 2.0 ms; failures 2 in the interval, 3 since start (unavailable 3)",
        "replicas per group",
        "  g0           experts 0-3        2 ready",
        "  g1           experts 4-7        1 ready, 1 quarantined",
    ]
    bars = frame.splitlines()[9:]
    assert bars[0] == "expert load, summed over MoE layers: tokens/s over the last 2.0 s; busiest/mean 5.00x"
    assert bars[1] == "  e0 " + "█" * 36 + "  62.5 %     200"
    assert bars[2] == "  e1 " + "█" * 18 + "·" * 18 + "  31.2 %     100"
    assert bars[3] == "  e2 " + "·" * 36 + "   0.0 %       0"
    assert bars[6] == "  e5 " + "█" * 4 + "·" * 32 + "   6.2 %    20.0"
    assert len(bars) == 9


def test_one_reading_shows_totals_since_start_and_no_rates():
    view = top_view(None, AFTER, "gw")
    assert view.tokens_per_s is None and view.interval_s is None
    assert view.expert_load[0] == 500 and view.load_basis == "token-expert pairs since the gateway started"
    frame = render_frame(view, "T")
    assert "one reading: no rates" in frame and "tokens/s           -" in frame and "(means since start)" in frame


def test_an_idle_interval_falls_back_to_redis_windows_then_to_totals():
    idle = parse_metrics(exposition(300, {0: 500, 1: 250, 5: 50}), taken_at=14.0)
    view = top_view(AFTER, idle, "gw")
    assert view.tokens_per_s == 0.0 and view.load_basis.endswith("(none in the last 2.0 s)")
    redis = RedisFacts({0: 1.5, 3: 4.5}, 60.0, {"g0": ((0, 1, 2, 3), 2)})
    view = top_view(AFTER, idle, "gw", redis)
    assert view.expert_load[3] == 4.5 and view.load_basis == "tokens/s over the last 60 s of Redis load windows"
    assert [r.states for r in view.replicas] == [{"ready": 2, "quarantined": 0}, {"ready": 1, "quarantined": 1}]


def test_redis_alone_shows_load_and_registered_replicas():
    redis = RedisFacts({0: 3.0, 1: 1.0}, 60.0, {"g1": ((4, 5, 6, 7), 1), "g0": ((0, 1, 2, 3), 2)})
    frame = render_frame(top_view(None, None, "redis://r:6379 (tiny)", redis), "T", width=50)
    lines = frame.splitlines()
    assert lines[:4] == ["eaas top · redis://r:6379 (tiny) · T · one reading: no rates", "replicas per group",
                         "  g0           experts 0-3        2 registered", "  g1           experts 4-7        1 registered"]
    assert "busiest/mean 6.00x" in lines[5] and len(lines) == 6 + 8  # experts 0-7: every one a group holds


def test_max_experts_shows_the_busiest_first():
    frame = render_frame(top_view(BEFORE, AFTER, "gw"), "T", width=60, max_experts=2)
    lines = frame.splitlines()
    assert lines[10] == "  (2 busiest of 8 experts)"
    assert lines[11].startswith("  e0 ") and lines[12].startswith("  e1 ") and len(lines) == 13


def test_several_gateways_add_up_and_a_restarted_gateway_counts_from_zero():
    both = merged([AFTER, parse_metrics(exposition(50, {2: 40}), 12.5)])
    assert both.total("eaas_gateway_generated_tokens_total") == 350 and both.taken_at == 12.5
    view = top_view(None, both, "gw1 + gw2")
    assert view.running == 6 and view.expert_load[2] == 40  # sums, but each gateway sees the same replicas:
    assert [r.states["ready"] for r in view.replicas] == [2, 1]
    restarted = parse_metrics(exposition(20, {0: 4}), taken_at=14.0)
    view = top_view(AFTER, restarted, "gw")
    assert view.tokens_per_s == 10.0 and view.expert_load[0] == 2.0 and view.expert_load[1] == 0.0


def test_bars_scale_to_the_busiest_and_any_traffic_shows():
    assert bar(10, 10, 8) == "████████" and bar(0, 10, 4) == "····" and bar(0.01, 10, 4) == "█···"
    assert bar(0, 0, 3) == "···"


def test_metrics_url_accepts_what_eaas_up_prints():
    assert metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert metrics_url("localhost:8000") == "http://localhost:8000/metrics"
    assert metrics_url("https://gw.example/metrics") == "https://gw.example/metrics"


def test_eaas_top_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, eaas.cli, eaas.top.cli, eaas.top.sources; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr
