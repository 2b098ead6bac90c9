"""`eaas routing-stats` exports the load windows gateways wrote to a real Redis; `eaas plan` replays them."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import redis

from eaas.mempool.keys import DeploymentKeys, load_bucket
from eaas.plan.routing_stats import routing_stats

pytestmark = pytest.mark.redis


def write_windows(client, deployment: str, newest: int) -> None:
    keys = DeploymentKeys(deployment)
    for age, counts in ((2, {0: 500, 3: 20}), (1, {0: 450, 5: 40}), (0, {1: 7})):
        for expert, n in counts.items():
            client.hincrby(keys.load(newest - 10 * age), str(expert), n)


def test_export_holds_the_last_complete_windows_oldest_first_without_the_open_one(redis_server):
    client = redis.Redis.from_url(redis_server.url)
    now = 1_700_000_005.0
    newest = load_bucket(now) - 10  # the last complete window
    write_windows(client, "shop", newest)
    client.hincrby(DeploymentKeys("shop").load(load_bucket(now)), "9", 99)  # the open window
    doc = routing_stats(client, "shop", now, 4)
    assert doc["deployment"] == "shop" and doc["bucket_s"] == 10
    assert [w["start"] for w in doc["windows"]] == [newest - 30, newest - 20, newest - 10, newest]
    assert [w["tokens"] for w in doc["windows"]] == [{}, {"0": 500, "3": 20}, {"0": 450, "5": 40}, {"1": 7}]


def test_exported_windows_feed_the_planners_popularity(redis_server, tmp_path):
    client = redis.Redis.from_url(redis_server.url)
    write_windows(client, "shop", load_bucket(time.time()) - 10)
    out = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "routing-stats", "--redis", redis_server.url,
                          "--deployment", "shop", "--windows", "30"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    windows = json.loads(out.stdout)["windows"]
    assert len(windows) == 30 and all(b["start"] - a["start"] == 10 for a, b in zip(windows, windows[1:]))
    totals: dict[str, int] = {}
    for w in windows:
        for e, n in w["tokens"].items():
            totals[e] = totals.get(e, 0) + n
    assert totals == {"0": 950, "1": 7, "3": 20, "5": 40}
    (tmp_path / "stats.json").write_text(out.stdout)
    plan = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "plan", "--hours", "0.1", "--routing-stats",
                           str(tmp_path / "stats.json"), "--experts", "8", "--top-k", "2", "--moe-layers", "4",
                           "--experts-per-group", "2", "--gateways", "1", "--max-batch", "16", "--slo-itl-ms", "400",
                           "--json", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr
    assert set(json.loads(plan.stdout)) == {"static", "reactive", "predictive"}


def test_an_unreachable_redis_is_a_one_line_error():
    out = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "routing-stats", "--redis", "redis://127.0.0.1:1",
                          "--deployment", "x"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "cannot read load windows" in out.stderr and "Traceback" not in out.stderr
