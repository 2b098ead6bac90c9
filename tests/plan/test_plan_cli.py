"""`eaas plan` as a user runs it: --json shape, --help defaults, --report files, a BurstGPT CSV, bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from eaas.plan.generator import TraceShape, generate_trace
from eaas.plan.trace import write_burstgpt_csv

FIELDS = {"replica_seconds", "static_replica_seconds", "ratio", "slo_attainment", "ttft_p99_s", "itl_p99_s",
          "failed_requests"}
SMALL = ["--experts", "16", "--top-k", "2", "--moe-layers", "4", "--experts-per-group", "4", "--gateways", "2",
         "--max-batch", "32", "--slo-itl-ms", "400", "--no-progress"]


def eaas(*args, timeout=300):
    return subprocess.run([sys.executable, "-P", "-m", "eaas.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_json_has_one_object_per_policy_with_the_documented_fields():
    out = eaas("plan", "--hours", "0.5", "--rate-scale", "0.5", *SMALL, "--json")
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert list(table) == ["static", "reactive", "predictive"]
    for name, row in table.items():
        assert FIELDS <= set(row), name
        assert row["ratio"] == pytest.approx(row["replica_seconds"] / row["static_replica_seconds"], abs=1e-3)
        assert 0.0 <= row["slo_attainment"] <= 1.0
    assert table["static"]["ratio"] == 1.0


def test_help_states_the_deepseek_v3_shaped_defaults():
    out = eaas("plan", "--help")
    assert out.returncode == 0
    text = " ".join(out.stdout.split())
    for flag, default in (("--experts", 256), ("--top-k", 8), ("--moe-layers", 58), ("--experts-per-group", 8),
                          ("--hours", "24.0")):
        assert f"{flag} " in text and f"(default: {default})" in text


def test_a_burstgpt_csv_replays_and_the_report_writes_plots_and_a_page(tmp_path):
    write_burstgpt_csv(generate_trace(TraceShape(hours=0.25), seed=4), tmp_path / "trace.csv")
    out = eaas("plan", "--trace", str(tmp_path / "trace.csv"), *SMALL, "--policies", "static,reactive",
               "--report", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert "reactive" in out.stdout and "static" in out.stdout
    for name in ("index.html", "frontier.png", "load_vs_replicas.png", "popularity.png", "summary.json"):
        assert (tmp_path / "report" / name).stat().st_size > 0, name
    assert 'src="frontier.png"' in (tmp_path / "report" / "index.html").read_text()


def test_unknown_policy_and_unreadable_trace_are_one_line_errors(tmp_path):
    bad = eaas("plan", "--hours", "0.05", *SMALL, "--policies", "static,clairvoyant")
    assert bad.returncode == 2 and "clairvoyant" in bad.stderr and "Traceback" not in bad.stderr
    missing = eaas("plan", "--trace", str(tmp_path / "nope.csv"), *SMALL)
    assert missing.returncode == 2 and "cannot read trace" in missing.stderr


def test_without_slo_itl_ms_the_slo_is_twice_a_full_batchs_step_from_the_profile(tmp_path):
    table = tmp_path / "table.json"  # an RPC costs 1 ms up to 64 pairs; the gateway 0.5..1 ms per layer
    table.write_text(json.dumps({"name": "t",
                                 "expert_call_s": {"batch": [1, 64, 1064], "seconds": [0.001, 0.001, 0.011]},
                                 "gateway_layer_s": {"batch": [1, 256], "seconds": [0.0005, 0.001]}}))
    small = [a for a in SMALL if a not in ("--slo-itl-ms", "400")]
    out = eaas("plan", "--hours", "0.1", *small, "--profile", str(table), "--policies", "static")
    assert out.returncode == 0, out.stderr
    # 4 layers x (gateway at 32 tokens + an RPC of 32 x top-2 / 4 groups = 16 pairs) x 2
    gateway = 0.0005 + (0.001 - 0.0005) * (32 - 1) / (256 - 1)
    slo_ms = 2 * 4 * (gateway + 0.001) * 1e3
    assert f"SLO {slo_ms:.0f} ms" in out.stdout
    out = eaas("plan", "--hours", "0.1", *SMALL, "--profile", str(table), "--policies", "static")
    assert "SLO 400 ms" in out.stdout


def test_the_report_frontier_has_a_point_per_headroom_and_the_default_target_follows_headroom(tmp_path):
    out = eaas("plan", "--hours", "0.25", "--rate-scale", "0.5", *SMALL, "--policies", "static,reactive,predictive",
               "--report", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    curves = json.loads((tmp_path / "report" / "summary.json").read_text())["frontier"]
    assert set(curves) == {"reactive", "predictive"}
    for points in curves.values():
        assert [p["headroom"] for p in points] == [0.55, 0.6, 0.65, 0.7, 0.75, 0.8]
        assert [p["target_x"] for p in points] == sorted(p["target_x"] for p in points)  # more headroom, more load
        assert next(p for p in points if p["headroom"] == 0.65)["target_x"] == 1.0  # the default run's own point
        assert all(0.0 <= p["slo_attainment"] <= 1.0 and p["violating_tokens"] >= 0 for p in points)

    def target(*flags):
        run = eaas("plan", "--hours", "0.05", *SMALL, "--policies", "static", *flags)
        assert run.returncode == 0, run.stderr
        return float(run.stdout.split("target ")[1].split(" pairs/s")[0])
    assert target("--headroom", "0.5") < target() < target("--headroom", "0.8")
    assert target("--target-per-replica", "123") == 123.0
