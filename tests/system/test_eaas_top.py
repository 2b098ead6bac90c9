"""`eaas top` against a real `eaas up` (expert processes + a gateway + Redis) after some traffic: from the
gateway's /metrics and from the Redis load windows, once and refreshing."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from concurrent_streams import metric, stream_all
from hf_checkpoints import write_hf_checkpoint
from metrics_catalog import documented_metrics

from eaas.top.snapshot import parse_metrics


def top(*args: str, timeout: float = 120) -> str:
    done = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "top", *args], capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, done.stderr
    return done.stdout


def bars(frame: str) -> dict[int, float]:
    """expert id -> the share (%) its bar line prints."""
    return {int(m.group(1)): float(m.group(2)) for m in re.finditer(r"^  e(\d+) [█·]+\s+([\d.]+) %", frame, re.M)}


@pytest.mark.slow
@pytest.mark.redis
def test_eaas_top_shows_a_running_deployment(tmp_path, up_fleet, redis_server):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=8)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, extra=("--redis", redis_server.url))
    prompts = [[(i * 31 + j) % 250 + 1 for j in range(3 + i)] for i in range(6)]
    results, errors = stream_all(fleet.gateways, prompts, 16, ignore_eos=True)
    assert not errors and all(len(ids) == 16 for ids in results.values())

    frame = top("--gateway-http", fleet.http, "--once", "--interval", "0.5", "--width", "80")
    lines = frame.splitlines()
    assert lines[0].startswith(f"eaas top · {fleet.http} · ") and lines[0].endswith("rates over 0.5 s")
    assert "finished 6 ok" in frame and "refused 0" in frame
    assert re.search(r"^  g0 +experts 0-3 +1 ready$", frame, re.M) and re.search(r"^  g1 +experts 4-7 +1 ready$",
                                                                                  frame, re.M)
    assert "expert load, summed over MoE layers: token-expert pairs since the gateway started" in frame
    shares = bars(frame)
    assert sorted(shares) == list(range(8)) and abs(sum(shares.values()) - 100) < 1  # one bar per expert
    routed = metric(fleet.http, "eaas_gateway_tokens_routed_total")
    # 16 tokens x 6 streams x top-2 x 3 MoE layers went through experts, plus the prompts' prefill
    assert routed >= 6 * 15 * 2 * 3

    # every eaas_* series the live gateway serves is documented (docs/metrics.md)
    import urllib.request

    live = parse_metrics(urllib.request.urlopen(fleet.http.removesuffix("/v1") + "/metrics", timeout=10)
                         .read().decode(), 0.0)
    documented = {s for info in documented_metrics().values() for s in info.series()}
    exported = {n for n in live.samples if n.startswith("eaas_")}
    assert "eaas_gateway_expert_replicas" in exported and exported <= documented, sorted(exported - documented)

    # the Redis view: load windows are flushed every 10 s and read only once complete
    deadline, frame = time.monotonic() + 120, ""
    while "Redis load windows" not in frame:
        assert time.monotonic() < deadline, frame
        time.sleep(2)
        frame = top("--redis", redis_server.url, "--deployment", "local", "--windows", "30", "--once")
    assert re.search(r"^  g0 +experts 0-3 +1 registered$", frame, re.M)
    assert sorted(bars(frame)) == list(range(8))


@pytest.mark.slow
def test_eaas_top_refreshes_until_interrupted(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=9)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1)
    proc = subprocess.Popen([sys.executable, "-P", "-m", "eaas.cli", "top", "--gateway-http", fleet.http,
                             "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        frames, deadline = 0, time.monotonic() + 120
        while frames < 3:
            assert time.monotonic() < deadline
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            frames += line.startswith("eaas top · ")
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 130
    fleet.stop()  # a gateway that went away is a one-line error for --once, exit 2
    done = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "top", "--gateway-http", fleet.http, "--once"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith("eaas top: error: cannot read ")
