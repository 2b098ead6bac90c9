"""Seeded BurstGPT-shaped traces: Gamma inter-arrivals re-stepped every minute, Zipf request/response lengths.

Follows BurstGPT's statistics (docs/design.md): bursty arrivals fit a Gamma distribution and its generator
starts at shape 0.25, scale 2 (mean gap 0.5 s, coefficient of variation 2), re-stepped every 60 s; token
lengths fit Zipf with parameter 1.1 (truncated here: Zipf 1.1 has no finite mean). On top of that, each
minute's rate follows a day curve (BurstGPT shows daily periodicity) and a random step per minute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eaas.plan.trace import Trace

MINUTE_S = 60.0


@dataclass(frozen=True)
class TraceShape:
    hours: float = 24.0
    gamma_shape: float = 0.25          # BurstGPT generator's starting shape
    gamma_scale: float = 2.0           # mean gap = shape * scale = 0.5 s -> 2 requests/s
    rate_scale: float = 1.0            # multiplies the request rate (a bigger deployment)
    day_amplitude: float = 0.5         # rate = mean * (1 + amplitude * sin(day phase)): peak/trough = 3
    minute_sigma: float = 0.3          # each minute's rate *= lognormal(0, sigma): the re-step
    minute_correlation: float = 0.0    # AR(1) coefficient of the log step: 0 = independent minutes
    zipf_a: float = 1.1                # BurstGPT's length distribution
    max_prompt_tokens: int = 4096
    max_response_tokens: int = 2048

    @property
    def mean_rate(self) -> float:
        return self.rate_scale / (self.gamma_shape * self.gamma_scale)


def minute_rates(shape: TraceShape, rng: np.random.Generator) -> np.ndarray:
    """Requests/s for each minute: day curve x lognormal step (mean 1). With minute_correlation rho the log
    step is AR(1) (same marginal sigma): a burst lasts about 1 / (1 - rho) minutes instead of one."""
    minutes = max(1, math.ceil(shape.hours * 60))
    phase = 2 * math.pi * np.arange(minutes) / (24 * 60)
    day = 1.0 + shape.day_amplitude * np.sin(phase - math.pi / 2)  # trough at 00:00, peak at 12:00
    sigma, rho = shape.minute_sigma, shape.minute_correlation
    noise = rng.normal(0.0, sigma, minutes)
    if rho > 0:
        innovations = noise * math.sqrt(1 - rho * rho)
        for m in range(1, minutes):
            noise[m] = rho * noise[m - 1] + innovations[m]
    step = np.exp(noise - sigma ** 2 / 2)
    return shape.mean_rate * day * step


def zipf_lengths(n: int, a: float, max_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """n draws of P(k) ~ k^-a on 1..max_tokens (inverse CDF over the finite support)."""
    k = np.arange(1, max_tokens + 1, dtype=np.float64)
    cdf = np.cumsum(k ** -a)
    cdf /= cdf[-1]
    return np.searchsorted(cdf, rng.random(n), side="right").astype(np.int64) + 1


def generate_trace(shape: TraceShape = TraceShape(), seed: int = 0) -> Trace:
    """A trace of shape.hours: within minute m, gaps ~ Gamma(shape, scale) scaled to that minute's rate."""
    rng = np.random.default_rng(seed)
    rates = minute_rates(shape, rng)
    chunks = []
    for m, rate in enumerate(rates):
        scale = 1.0 / (shape.gamma_shape * rate)  # mean gap = shape * scale = 1 / rate
        expected = rate * MINUTE_S
        n = int(expected + 6 * math.sqrt(expected / shape.gamma_shape) + 16)
        times = np.cumsum(rng.gamma(shape.gamma_shape, scale, n))
        while times[-1] < MINUTE_S:  # rare: draw more gaps
            times = np.concatenate([times, times[-1] + np.cumsum(rng.gamma(shape.gamma_shape, scale, n))])
        chunks.append(m * MINUTE_S + times[times < MINUTE_S])
    arrival = np.concatenate(chunks) if chunks else np.zeros(0)
    arrival = arrival[arrival < shape.hours * 3600]
    n = len(arrival)
    prompts = zipf_lengths(n, shape.zipf_a, shape.max_prompt_tokens, rng)
    responses = zipf_lengths(n, shape.zipf_a, shape.max_response_tokens, rng)
    return Trace(arrival - (arrival[0] if n else 0.0), prompts, responses)
