"""How many micro-batches a gateway splits a step into (ping-pong overlap of one micro-batch's attention
with the other's expert calls), and the measurement behind the defaults.

The micro-batches take turns on the engine's one thread (eaas/engine/micro_batch_turns.py). Splitting
doubles the expert requests per layer and halves every dense op's batch, so it costs CPU; it pays only when
the overlap has idle CPU to use, which a large batch gives and a small one does not. Measured on one 2-core
host where the gateway and 2 x 2 expert servers share the cores (`python -P benchmarks/revisions_ab.py HEAD
--micro-batches 1 2 --seqs 64 96 128 192 256`, shm, 3 rounds interleaved), decode tok/s, 1 vs 2
micro-batches: 64 seqs 2680 vs 1818; 96: 3318 vs 2370; 128: 3655 vs 2885; 192: 3600 vs 3567 (a tie);
256: 3774 vs 4069 (+8%). Hence: at most 2, and only when each gets at least 128 tokens.
"""

DEFAULT_MICRO_BATCHES = 2         # the most a step is split into
DEFAULT_MICRO_BATCH_MIN_TOKENS = 128  # ... and only while each micro-batch gets at least this many tokens


def micro_batch_count(tokens: int, most: int, min_tokens: int) -> int:
    """How many micro-batches a step of `tokens` tokens runs as: at most `most`, each at least `min_tokens`."""
    return max(1, min(most, tokens // max(1, min_tokens)))
