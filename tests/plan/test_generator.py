"""The generated trace has BurstGPT's statistics: Gamma(0.25, 2) gaps (bursty), Zipf(1.1) lengths, seeded."""

from __future__ import annotations

import numpy as np

from eaas.plan.generator import TraceShape, generate_trace, minute_rates, zipf_lengths


def test_same_seed_same_trace_other_seed_other_trace():
    a, b, c = (generate_trace(TraceShape(hours=0.2), seed=s) for s in (1, 1, 2))
    assert np.array_equal(a.arrival_s, b.arrival_s) and np.array_equal(a.response_tokens, b.response_tokens)
    assert len(a) != len(c) or not np.array_equal(a.arrival_s, c.arrival_s)


def test_flat_trace_has_the_gamma_mean_rate_and_burstiness():
    # no day curve, no per-minute step: gaps are Gamma(shape 0.25, scale 2): mean 0.5 s, CV 2
    shape = TraceShape(hours=6, day_amplitude=0.0, minute_sigma=0.0)
    trace = generate_trace(shape, seed=0)
    rate = len(trace) / (shape.hours * 3600)
    assert abs(rate - 2.0) / 2.0 < 0.03
    gaps = np.diff(trace.arrival_s)
    cv = gaps.std() / gaps.mean()
    assert 1.8 < cv < 2.2  # Poisson would be 1


def test_day_curve_makes_noon_busier_than_midnight():
    trace = generate_trace(TraceShape(hours=24), seed=0)
    per_hour = np.bincount((trace.arrival_s // 3600).astype(int), minlength=24)
    assert per_hour[11:13].mean() > 2 * per_hour[[23, 0]].mean()
    assert abs(len(trace) / 86400 - 2.0) / 2.0 < 0.05


def test_zipf_lengths_follow_the_power_law():
    rng = np.random.default_rng(0)
    n = zipf_lengths(400_000, 1.1, 2048, rng)
    assert n.min() >= 1 and n.max() <= 2048
    counts = np.bincount(n, minlength=11)
    # P(1)/P(2) = 2^1.1 and P(1)/P(10) = 10^1.1 for a Zipf(1.1) law
    assert abs(counts[1] / counts[2] - 2 ** 1.1) < 0.1
    assert abs(counts[1] / counts[10] / 10 ** 1.1 - 1) < 0.1


def test_burst_correlation_makes_busy_minutes_follow_busy_minutes_with_the_same_spread():
    def log_steps(rho):
        shape = TraceShape(hours=48, day_amplitude=0.0, minute_sigma=0.3, minute_correlation=rho)
        return np.log(minute_rates(shape, np.random.default_rng(0)) / shape.mean_rate)

    independent, persistent = log_steps(0.0), log_steps(0.9)
    lag1 = [np.corrcoef(x[:-1], x[1:])[0, 1] for x in (independent, persistent)]
    assert abs(lag1[0]) < 0.05 and 0.85 < lag1[1] < 0.95
    assert abs(independent.std() - 0.3) < 0.02 and abs(persistent.std() - 0.3) < 0.05
    assert abs(np.exp(persistent).mean() - 1.0) < 0.05  # the mean rate is kept
