"""Context caching: time to first token with a warm shared prefix divided by a cold one.

    python benchmarks/prefix_cache_ttft.py [--prefix-tokens 1536] [--trials 5]

Starts `eaas up` (expert servers as processes + a gateway with its MemPool), then for each trial sends
a long prompt never seen before (cold: full prefill) and the same prefix with another short question
(warm: the prefix's KV blocks come from the pool, only the tail is prefilled). Prints both medians and
the ratio warm / cold (lower is better).
"""

from __future__ import annotations

import argparse
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from eaas.client import SyncClient
from eaas.model.tiny import write_tiny_model


def ttft(client: SyncClient, prompt: list[int]) -> float:
    start = time.perf_counter()
    for _ in client.generate_stream(prompt_ids=prompt, max_tokens=1, ignore_eos=True):
        return time.perf_counter() - start
    raise RuntimeError("no token")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prefix-tokens", type=int, default=1536)
    ap.add_argument("--suffix-tokens", type=int, default=16)
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--base-port", type=int, default=27000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as model:
        write_tiny_model(model, "mixtral", seed=0, hidden_size=args.hidden_size, layers=4, experts=8, top_k=2)
        up = subprocess.Popen([sys.executable, "-P", "-m", "eaas.cli", "up", "--model", model, "--expert-replicas", "1",
                               "--expert-base-port", str(args.base_port), "--grpc-port", str(args.base_port + 50),
                               "--http-port", str(args.base_port + 60)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            for line in up.stdout:
                if line.startswith("ready;"):
                    break
            else:
                raise RuntimeError("eaas up did not start")
            rng = random.Random(0)
            cold, warm = [], []
            with SyncClient([f"127.0.0.1:{args.base_port + 50}"], timeout=300) as client:
                ttft(client, [1, 2, 3])  # warm-up
                for _ in range(args.trials):
                    prefix = [rng.randrange(3, 250) for _ in range(args.prefix_tokens)]
                    cold.append(ttft(client, prefix + [rng.randrange(3, 250) for _ in range(args.suffix_tokens)]))
                    warm.append(ttft(client, prefix + [rng.randrange(3, 250) for _ in range(args.suffix_tokens)]))
            c, w = statistics.median(cold), statistics.median(warm)
            print(f"model: tiny mixtral hidden {args.hidden_size}, 4 layers; eaas up (2 expert processes + gateway, "
                  f"in-process MemPool, 16-token blocks)")
            print(f"prompt: {args.prefix_tokens}-token shared prefix + {args.suffix_tokens}-token question, "
                  f"median of {args.trials}")
            print(f"TTFT cold {c * 1000:8.1f} ms   warm {w * 1000:8.1f} ms   warm / cold {w / c:.3f}")
        finally:
            up.send_signal(signal.SIGTERM)
            up.wait(60)


if __name__ == "__main__":
    main()
