"""CPU time libgomp's idle workers burn while a process waits between ops, with and without eaas' setting
(GOMP_SPINCOUNT=3000, eaas/openmp.py), measured in one run.

Each child process runs 40 x (one 2-thread 192x192 matmul, then 5 ms asleep, as a gateway waits on an expert
RPC) and reports its CPU time. Default libgomp spins the second thread through most of every wait.

    python benchmarks/openmp_idle_spin.py [--repeats 3]

Measured 2026-12-01 on the 2-core machine, shared with other jobs (`--repeats 1`): default 0.327 s of CPU,
eaas 0.025 s (ratio 0.08). The figure moves with machine load; the ratio is why it is not a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

WAITS = """
import os, sys, time
if sys.argv[1] == "eaas":
    import eaas.cli
import torch
torch.set_num_threads(2)
x = torch.randn(192, 192)
for _ in range(5):
    x @ x
start = time.process_time()
for _ in range(40):
    x @ x
    time.sleep(0.005)
print(os.environ.get("GOMP_SPINCOUNT"), time.process_time() - start)
"""


def cpu_seconds(how: str) -> tuple[str, float]:
    """(GOMP_SPINCOUNT the child saw, its CPU seconds): how = "plain" (libgomp default) or "eaas"."""
    environ = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    out = subprocess.run([sys.executable, "-P", "-c", WAITS, how], env=environ, capture_output=True, text=True,
                         timeout=300, check=True).stdout.split()
    return out[0], float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    plain = [cpu_seconds("plain") for _ in range(args.repeats)]
    quiet = [cpu_seconds("eaas") for _ in range(args.repeats)]
    p, q = statistics.median(s for _, s in plain), statistics.median(s for _, s in quiet)
    print(f"GOMP_SPINCOUNT seen: default {plain[0][0]}, eaas {quiet[0][0]}")
    print(f"CPU seconds for 40 x (matmul + 5 ms wait), median of {args.repeats}: default {p:.3f}, eaas {q:.3f}, "
          f"ratio {q / p:.2f}")


if __name__ == "__main__":
    main()
