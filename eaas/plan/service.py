"""Service-rate profile: how long one expert RPC and the gateway's own work per layer take vs batch size.

A profile is JSON (eaas/plan/profiles/*.json, written by benchmarks/plan_profile.py on this machine, or a
user's table for GPUs):
    {"name": ..., "source": ..., "expert_call_s": {"batch": [...], "seconds": [...]},
     "gateway_layer_s": {"batch": [...], "seconds": [...]}}
expert_call_s: one Combine RPC on one replica carrying `batch` (token, expert) pairs of one layer,
transport included. gateway_layer_s: the gateway's non-expert time per MoE layer for a step of `batch`
tokens. Between points: linear; beyond the last: the last segment's slope (compute-bound growth).
Measured times are made non-decreasing in batch (a running maximum): more work never takes less time,
and a dip in a measured curve is the machine's noise.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaas.errors import UserError

PROFILES = Path(__file__).with_name("profiles")
DEFAULT_PROFILE = PROFILES / "cpu-mixtral-h512.json"


class Curve:
    """Seconds vs batch: piecewise linear, non-decreasing, extrapolated with the last segment's slope."""

    def __init__(self, batch, seconds):
        self.batch = np.asarray(batch, dtype=np.float64)
        self.seconds = np.maximum.accumulate(np.asarray(seconds, dtype=np.float64))
        self.slope = float((self.seconds[-1] - self.seconds[-2]) / (self.batch[-1] - self.batch[-2]))
        self._xs, self._ys = self.batch.tolist(), self.seconds.tolist()

    def __call__(self, batch):
        b = np.asarray(batch, dtype=np.float64)
        inside = np.interp(b, self.batch, self.seconds)
        return np.where(b > self.batch[-1], self.seconds[-1] + self.slope * (b - self.batch[-1]), inside)

    def at(self, batch: float) -> float:
        """Scalar version (the replay calls it every tick)."""
        xs, ys = self._xs, self._ys
        if batch >= xs[-1]:
            return ys[-1] + self.slope * (batch - xs[-1])
        if batch <= xs[0]:
            return ys[0]
        i = bisect.bisect_right(xs, batch)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (batch - x0) / (x1 - x0)


@dataclass(frozen=True)
class ServiceProfile:
    name: str
    source: str
    expert_call: Curve
    gateway_layer: Curve

    def replica_tokens_per_s(self, batch):
        """(token, expert) pairs per second one replica serves at a per-call batch."""
        b = np.asarray(batch, dtype=np.float64)
        return b / self.expert_call(b)


def _curve(doc: dict, key: str, where: str) -> Curve:
    try:
        batch = np.asarray(doc[key]["batch"], dtype=np.float64)
        seconds = np.asarray(doc[key]["seconds"], dtype=np.float64)
    except (KeyError, TypeError, ValueError):
        raise UserError(f"{where}: {key} needs 'batch' and 'seconds' lists of numbers") from None
    if len(batch) < 2 or len(batch) != len(seconds) or np.any(np.diff(batch) <= 0) or np.any(seconds <= 0):
        raise UserError(f"{where}: {key} needs >= 2 points, batches ascending, seconds > 0")
    return Curve(batch, seconds)


def profile_from_dict(doc: dict, where: str = "profile") -> ServiceProfile:
    return ServiceProfile(str(doc.get("name", where)), str(doc.get("source", "")),
                          _curve(doc, "expert_call_s", where), _curve(doc, "gateway_layer_s", where))


def load_profile(path: str | Path = DEFAULT_PROFILE) -> ServiceProfile:
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read service profile {path}: {exc}") from None
    return profile_from_dict(doc, str(path))
