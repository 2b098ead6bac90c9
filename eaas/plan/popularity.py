"""Expert popularity over time: each expert's share of a layer's routed tokens, per minute.

Two sources:
- the built-in skew model. Experts form co-activation clusters (a token's top-k tend to come from one
  cluster, so clusters are also hot together); expert weights are lognormal (sigma 1.2: the hottest of 256
  experts is ~10-20x the mean, as "Patterns behind Chaos", arXiv 2510.05497, measured >16x) and each
  cluster's weight drifts as a mean-reverting random walk (time constant 1 h, sigma 0.5). Expert ids are
  shuffled, so contiguous ids are not co-activating. The same routing holds in every MoE layer.
- routing statistics a deployment recorded (`eaas routing-stats`): per-window tokens per expert id,
  replayed cyclically over the trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaas.errors import UserError

MINUTE_S = 60.0


@dataclass(frozen=True)
class Popularity:
    shares: np.ndarray         # [minutes, experts], each row sums to 1: a layer's routing share
    cluster_of: np.ndarray     # [experts] co-activation cluster id (-1: unknown, e.g. recorded stats)
    affinity: float            # probability that one of a token's top-k picks comes from its cluster
    history: np.ndarray        # [minutes, experts] shares recorded BEFORE the trace (placement learns here)

    def at(self, t_s: float) -> np.ndarray:
        return self.shares[min(int(t_s // MINUTE_S), len(self.shares) - 1)]

    @property
    def experts(self) -> int:
        return self.shares.shape[1]


@dataclass(frozen=True)
class SkewModel:
    sigma: float = 1.2            # lognormal sigma of static expert weights
    drift_sigma: float = 0.5      # stationary sigma of a cluster's log-weight drift
    drift_tau_s: float = 3600.0   # drift time constant
    cluster_size: int = 8
    affinity: float = 0.6


def skewed_popularity(experts: int, minutes: int, model: SkewModel = SkewModel(), seed: int = 0,
                      history_minutes: int = 360) -> Popularity:
    """Built-in skew model over `history_minutes` before the trace and `minutes` of it."""
    rng = np.random.default_rng(seed + 7919)
    clusters = max(1, experts // model.cluster_size)
    cluster_of = rng.permutation(np.arange(experts) % clusters)  # shuffled ids
    base = rng.normal(0.0, model.sigma, experts)
    total = minutes + history_minutes
    decay = float(np.exp(-MINUTE_S / model.drift_tau_s))
    noise = rng.normal(0.0, model.drift_sigma * np.sqrt(1 - decay ** 2), (total, clusters))
    drift = np.empty((total, clusters))
    drift[0] = rng.normal(0.0, model.drift_sigma, clusters)
    for m in range(1, total):
        drift[m] = decay * drift[m - 1] + noise[m]
    weights = np.exp(base[None, :] + drift[:, cluster_of])
    shares = weights / weights.sum(axis=1, keepdims=True)
    return Popularity(shares[history_minutes:], cluster_of, model.affinity, shares[:history_minutes])


def recorded_popularity(stats: dict, experts: int, minutes: int) -> Popularity:
    """Shares from `eaas routing-stats` output, one row per recorded window, replayed over `minutes`."""
    windows = stats.get("windows") or []
    counts = np.zeros((len(windows), experts))
    for i, w in enumerate(windows):
        for e, n in (w.get("tokens") or {}).items():
            if int(e) < experts:
                counts[i, int(e)] += float(n)
    counts = counts[counts.sum(axis=1) > 0]
    if not len(counts):
        raise UserError("routing stats hold no traffic for these experts")
    counts += counts.sum(axis=1, keepdims=True) * 1e-6 / experts  # an expert never seen is not impossible
    shares = counts / counts.sum(axis=1, keepdims=True)
    rows = shares[np.arange(minutes) % len(shares)]
    return Popularity(rows, np.full(experts, -1), 0.0, shares)


def read_routing_stats(path: str | Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read routing stats {path}: {exc}") from None
