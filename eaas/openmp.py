"""OpenMP settings every eaas process gets, applied before torch loads libgomp (the user's own win).

libgomp's idle workers spin GOMP_SPINCOUNT (default 300,000) pause instructions after each parallel
region before sleeping: several ms on this project's CPUs. A gateway waits on expert RPCs between ops,
so its workers burned a core spinning while the expert servers it waits on needed that core (measured:
45 ms of CPU per 69 ms decode step at 64 sequences). 3000 still spans the gaps between consecutive ops:
monolithic decode measured the same (benchmarks/monolithic_vs_hf.py, within run-to-run noise).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

GOMP_SPINCOUNT = "3000"


def quiet_idle_workers(environ: MutableMapping[str, str] = os.environ) -> None:
    """Set GOMP_SPINCOUNT unless already set; effective only before torch (libgomp) is first imported."""
    environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
