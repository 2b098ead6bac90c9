"""Decode tok/s of this checkout's engine vs another checkout's (e.g. before a KV-cache change), one run.

    git archive <old-commit> eaas/engine | tar -x -C /tmp/old     # the old engine package
    python benchmarks/decode_old_vs_new.py --old /tmp/old/eaas/engine [--batch 32 --new-tokens 64 --rounds 3]

Each measurement is a fresh child process that loads one engine package (the old one by pointing
eaas.engine's package path at --old), warms it up, then times engine.generate over the same prompts as
benchmarks/monolithic_vs_hf.py; old and new alternate, so both see the same machine load. Prints the
best of each and the ratio new / old (target >= 0.95), in wall time and in CPU time (tokens per CPU-second of
the child, which other processes on a shared machine disturb less; the warm-up counts in it for both).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def child(args) -> None:
    import eaas.engine

    if args.engine_dir:
        eaas.engine.__path__[:] = [args.engine_dir]  # the old package, under the same name
    sys.path.insert(0, HERE)
    from monolithic_vs_hf import eaas_tokens_per_s, prompts

    from eaas.engine.factory import monolithic_engine

    import time

    engine = monolithic_engine(args.model)
    cpu = time.process_time()
    tok_s = eaas_tokens_per_s(engine, prompts(args.batch), args.new_tokens)
    cpu = time.process_time() - cpu  # CPU seconds of every thread: less disturbed by other processes
    print(json.dumps({"tok_s": tok_s, "tok_per_cpu_s": args.batch * args.new_tokens / cpu}))


def measure(model: str, engine_dir: str, batch: int, new_tokens: int) -> dict:
    cmd = [sys.executable, "-P", __file__, "--child", "--model", model, "--engine-dir", engine_dir,
           "--batch", str(batch), "--new-tokens", str(new_tokens)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", help="the old eaas/engine directory")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--engine-dir", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(args)
    if not args.old:
        ap.error("--old is required")
    from eaas.model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        write_tiny_model(d, "mixtral", seed=0, hidden_size=args.hidden_size, layers=args.layers)
        old, new = [], []
        for _ in range(args.rounds):
            old.append(measure(d, args.old, args.batch, args.new_tokens))
            new.append(measure(d, "", args.batch, args.new_tokens))
    print(f"tiny mixtral (hidden {args.hidden_size}, {args.layers} layers), batch {args.batch}, "
          f"{args.new_tokens} new tokens, greedy, best of {args.rounds}")
    for key, unit in (("tok_s", "tok/s (wall)"), ("tok_per_cpu_s", "tok per CPU-second")):
        o, n = [r[key] for r in old], [r[key] for r in new]
        print(f"{unit}: old {max(o):8.1f} (all: {', '.join(f'{x:.0f}' for x in o)}); "
              f"new {max(n):8.1f} (all: {', '.join(f'{x:.0f}' for x in n)}); new / old {max(n) / max(o):.3f}")
    print("target: new / old >= 0.95")


if __name__ == "__main__":
    main()
