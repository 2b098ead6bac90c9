"""Every eaas process quiets libgomp's idle workers (eaas/openmp.py) before torch loads, unless the user set
their own GOMP_SPINCOUNT. How much CPU that saves is measured by benchmarks/openmp_idle_spin.py."""

from __future__ import annotations

import os
import subprocess
import sys

from eaas.openmp import GOMP_SPINCOUNT, quiet_idle_workers

# What libgomp will read: the environment when torch is first imported
SEEN_BY_TORCH = """
import sys
if sys.argv[1] == "eaas":
    import eaas.cli
import os, torch
print(os.environ.get("GOMP_SPINCOUNT"))
"""


def spin_count_seen(how: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"} | env
    return subprocess.run([sys.executable, "-P", "-c", SEEN_BY_TORCH, how], env=environ, capture_output=True,
                          text=True, timeout=120, check=True).stdout.strip()


def test_eaas_processes_set_the_spin_count_before_torch_loads():
    assert spin_count_seen("plain") == "None"
    assert spin_count_seen("eaas") == GOMP_SPINCOUNT == "3000"


def test_a_users_own_spin_count_wins():
    assert spin_count_seen("eaas", GOMP_SPINCOUNT="50") == "50"


def test_quiet_idle_workers_only_fills_a_missing_value():
    unset, own = {}, {"GOMP_SPINCOUNT": "0"}
    quiet_idle_workers(unset)
    quiet_idle_workers(own)
    assert (unset, own) == ({"GOMP_SPINCOUNT": "3000"}, {"GOMP_SPINCOUNT": "0"})
