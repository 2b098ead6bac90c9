"""A real step's extra time at a fixed batch, added to the modelled step: the process descheduled by the OS,
garbage collection, a gRPC hiccup. Measured, not fitted: one stream alone on the real system, its
inter-token gaps minus their median (each gap is one step at batch 1, so the spread is the step's own).

Added, not multiplied: in the validation replays (docs/planner.md) a gap's extra time over the calibrated
step at its batch was 60-190 ms at p99 for batches 1-64, around the one-stream measurement's 108 ms; the
one stream's p99 / p50 (5.1 on a 32 ms step), multiplied, would have put a 120 ms step's p99 at 600 ms.
"""

from __future__ import annotations

import numpy as np


class StepStalls:
    """Draws a step's extra seconds. The replay meets a step once per tick it lasts, so a step of length
    s + e is drawn in proportion to s + e (rejection sampling): per token the spread is the measured one."""

    def __init__(self, extra_s, seed: int = 0):
        e = np.asarray(extra_s, dtype=np.float64)
        if not len(e):
            raise ValueError("no measured stalls")
        self.extra = np.maximum(e, 0.0)  # faster than the median is the model's median already
        self.longest = float(self.extra.max())
        self.rng = np.random.default_rng(seed)

    @classmethod
    def from_gaps(cls, gaps_s, seed: int = 0) -> "StepStalls":
        """From one stream's inter-token gaps: each minus their median."""
        g = np.asarray(gaps_s, dtype=np.float64)
        g = g[g >= 0.25 * np.median(g)]  # a near-0 gap is two tokens delivered together, not a step
        return cls(g - np.median(g), seed)

    def draw(self, step_s: float) -> float:
        """Extra seconds for a step the model puts at step_s."""
        while True:
            e = float(self.extra[self.rng.integers(len(self.extra))])
            if self.rng.random() * (step_s + self.longest) <= step_s + e:
                return e
