"""Time of one layer's expert combine by FFN path, and which path `_use_padded_grid` picks, over expert
counts, sizes, batch sizes and uniform or skewed routing.

    python benchmarks/expert_ffn_paths.py [--threads 2] [--repeats 20]

Paths: padded (one bmm over a [held, max count, D] grid), grouped (torch.nn.functional.grouped_mm over each
expert's rows: the unpadded path on CPU) and loop (one matmul per expert from Python: the unpadded path
elsewhere). "vs best" is the picked path's time over the better of padded and grouped: 1.00 means the rule
chose the faster one.
"""

from __future__ import annotations

import argparse
import time

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()

import torch  # noqa: E402

from eaas.model import experts as experts_mod  # noqa: E402
from eaas.model.experts import ExpertWeights, LayerExperts  # noqa: E402

SHAPES = [  # (experts, top-k, hidden, expert ffn)
    (8, 2, 128, 192), (64, 8, 128, 192), (128, 8, 128, 192), (8, 2, 512, 768), (64, 8, 512, 768)]
TOKENS = [8, 32, 128, 512]


def make_case(experts: int, top_k: int, hidden: int, ffn: int, tokens: int, skew: float):
    g = torch.Generator().manual_seed(0)
    slot_of = torch.full((experts + 1,), -1, dtype=torch.long)
    slot_of[:experts] = torch.arange(experts)
    layer = LayerExperts(list(range(experts)), torch.randn(experts, hidden, 2 * ffn, generator=g) * 0.05,
                         torch.randn(experts, ffn, hidden, generator=g) * 0.05, slot_of)
    weights = ExpertWeights({0: layer}, experts, hidden, "silu", torch.float32)
    router = torch.randn(tokens, experts, generator=g) + skew * torch.linspace(2, 0, experts)  # skew: hot experts
    ids = router.topk(top_k, dim=-1).indices
    gates = torch.softmax(torch.randn(tokens, top_k, generator=g), dim=-1)
    return weights, torch.randn(tokens, hidden, generator=g), ids, gates


def seconds(fn, repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):  # best of 3 batches of repeats: the least disturbed by other work on the machine
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rule, grouped_mm = experts_mod._use_padded_grid, experts_mod._grouped_mm
    print(f"{'experts':>7} {'k':>2} {'hidden':>6} {'tokens':>6} {'routing':>8} | {'padded':>8} {'grouped':>8} "
          f"{'loop':>8} ms | picked   vs best")
    worst = 1.0
    with torch.inference_mode():
        for experts, top_k, hidden, ffn in SHAPES:
            for tokens in TOKENS:
                for skew, routing in ((0.0, "uniform"), (1.5, "skewed")):
                    w, x, ids, gates = make_case(experts, top_k, hidden, ffn, tokens, skew)
                    times = {}
                    for name, padded, grouped in (("padded", True, grouped_mm), ("grouped", False, grouped_mm),
                                                  ("loop", False, None)):
                        experts_mod._use_padded_grid = lambda *_, padded=padded: padded
                        experts_mod._grouped_mm = grouped
                        times[name] = seconds(lambda: w.combine(0, x, ids, gates), args.repeats)
                    experts_mod._use_padded_grid, experts_mod._grouped_mm = rule, grouped_mm
                    counts = torch.bincount(ids.reshape(-1), minlength=experts).tolist()
                    shape = f"grid {experts * max(counts)} pairs {sum(counts)} hit {sum(1 for n in counts if n)}"
                    picked = "padded" if rule(counts, ffn * hidden) else "grouped"
                    ratio = times[picked] / min(times["padded"], times["grouped"])
                    worst = max(worst, ratio)
                    print(f"{experts:>7} {top_k:>2} {hidden:>6} {tokens:>6} {routing:>8} | "
                          f"{times['padded'] * 1e3:8.2f} {times['grouped'] * 1e3:8.2f} {times['loop'] * 1e3:8.2f}    | "
                          f"{picked:<10} {ratio:4.2f}   {shape}", flush=True)
    print(f"worst picked / best: {worst:.2f}")


if __name__ == "__main__":
    main()
