"""The operator's import footprint: seconds to import its handlers and peak RSS, each in a fresh process.

    .venv/bin/python -P benchmarks/operator_footprint.py [--runs 5]

Prints the median import time, the peak resident memory, and whether torch was loaded (it must not be:
the chart gives the operator 256Mi).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

PROBE = """
import json, resource, sys, time
start = time.perf_counter()
import eaas.operator.handlers
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "torch": "torch" in sys.modules}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    samples = [json.loads(subprocess.run([sys.executable, "-P", "-c", PROBE], check=True, capture_output=True,
                                         text=True).stdout) for _ in range(args.runs)]
    print(f"import eaas.operator.handlers: median {statistics.median(s['seconds'] for s in samples):.2f} s, "
          f"peak RSS median {statistics.median(s['max_rss_mib'] for s in samples):.0f} MiB, "
          f"torch loaded: {any(s['torch'] for s in samples)} ({args.runs} fresh processes)")


if __name__ == "__main__":
    main()
