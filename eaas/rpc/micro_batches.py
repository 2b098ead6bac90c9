"""How many micro-batches a gateway splits a step into (ping-pong overlap of one micro-batch's attention
with the other's expert calls), and the measurements behind the defaults.

The micro-batches take turns on the engine's one thread (eaas/engine/micro_batch_turns.py). Splitting
doubles the expert requests per layer and halves every dense op's batch, so it costs CPU; it pays only when
the overlap has idle CPU to use, which a large batch gives and a small one does not. Measured on one 2-core
host where the gateway and 2 x 2 expert servers share the cores (`python -P benchmarks/revisions_ab.py HEAD
--micro-batches 1 2 --seqs ...`, rounds interleaved), decode tok/s, 1 vs 2 micro-batches:
- shm: 64 seqs 2680 vs 1818; 96: 3318 vs 2370; 128: 3655 vs 2885; 192: 3600 vs 3567 (a tie); 256: 3774 vs
  4069 (+8%) and 3948 vs 4117 (+4%, 4 rounds). Hence at most 2, and only while each gets >= 128 tokens.
- grpc, 256 seqs: 3746 vs 2666 (-29%). The gRPC client sends and receives on its own asyncio thread, which
  needs the GIL that the other micro-batch's attention holds. Hence 1 with --transport grpc.
"""

import argparse

from eaas.errors import UserError

DEFAULT_MICRO_BATCHES = 2             # the most a step is split into (shm / auto transport)
DEFAULT_MICRO_BATCH_MIN_TOKENS = 128  # ... and only while each micro-batch gets at least this many tokens


def default_micro_batches(transport: str) -> int:
    """The gateway's --micro-batches when not given: 1 on gRPC only, where splitting was measured slower."""
    return 1 if transport == "grpc" else DEFAULT_MICRO_BATCHES


def micro_batch_count(tokens: int, most: int, min_tokens: int) -> int:
    """How many micro-batches a step of `tokens` tokens runs as: at most `most`, each at least `min_tokens`."""
    return max(1, min(most, tokens // max(1, min_tokens)))


def add_micro_batch_arguments(parser: argparse.ArgumentParser) -> None:
    """--micro-batches and --micro-batch-min-tokens, as `eaas gateway` and `eaas up` both take them."""
    parser.add_argument("--micro-batches", type=int,
                        help="split a step into at most N micro-batches that take turns, one's attention overlapping "
                             f"the other's expert calls (default {DEFAULT_MICRO_BATCHES} with --transport auto or shm, "
                             "1 with grpc: measured, see eaas/rpc/micro_batches.py)")
    parser.add_argument("--micro-batch-min-tokens", type=int, default=DEFAULT_MICRO_BATCH_MIN_TOKENS,
                        help="split a step only while each micro-batch gets at least this many tokens (default "
                             f"{DEFAULT_MICRO_BATCH_MIN_TOKENS}: smaller steps ran faster unsplit, measured)")


def check_micro_batch_arguments(args: argparse.Namespace) -> None:
    """Refuse a micro-batch count or minimum below 1 (UserError: one line, exit 2)."""
    for flag in ("micro_batches", "micro_batch_min_tokens"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
