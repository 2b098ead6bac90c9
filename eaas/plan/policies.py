"""Replica policies the planner compares; each steps per decision interval and returns desired replicas.

- static: every group runs a fixed count (peak provisioning: enough for the group's peak load).
- reactive: the operator's autoscaler as it is (operator/autoscale.py decide_replicas on the load now).
- predictive: the same decision on max(load now, forecast one start-up delay ahead) from the 10 s load
  windows, scale-down held only that long (operator/forecast.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from eaas.operator.autoscale import ScalingPolicy, decide_replicas
from eaas.operator.forecast import ForecastSettings, decision_loads


@dataclass
class StaticPolicy:
    replicas: np.ndarray
    name: str = "static"

    def decide(self, now: float, current: np.ndarray, loads: np.ndarray, windows=()) -> np.ndarray:
        return self.replicas.copy()


@dataclass
class ReactivePolicy:
    scaling: ScalingPolicy
    name: str = "reactive"
    histories: dict = field(default_factory=dict)

    def loads_for_decision(self, now: float, loads: np.ndarray, windows) -> np.ndarray:
        return loads

    def decide(self, now: float, current: np.ndarray, loads: np.ndarray, windows=()) -> np.ndarray:
        wanted = self.loads_for_decision(now, loads, windows)
        out = np.empty(len(current), dtype=np.int64)
        for g, (replicas, load) in enumerate(zip(current.tolist(), wanted.tolist())):
            decision = decide_replicas(replicas, load, self.histories.get(g, ()), now, self.scaling)
            self.histories[g] = decision.history
            out[g] = decision.replicas
        return out


@dataclass
class PredictivePolicy(ReactivePolicy):
    forecast: ForecastSettings = ForecastSettings(horizon_s=75.0)
    affinity: np.ndarray | None = None
    name: str = "predictive"
    readings: list = field(default_factory=list)
    last_window: float = -1.0

    def loads_for_decision(self, now: float, loads: np.ndarray, windows) -> np.ndarray:
        """The forecaster's readings are the load windows themselves, each once (as the operator reads the
        last `lookback` windows from Redis: operator/load.py group_window_readings)."""
        if not self.readings:
            self.readings = [[] for _ in loads]
        for start, window in windows:
            if start <= self.last_window:
                continue
            self.last_window = start
            for g, load in enumerate(window.tolist()):
                self.readings[g].append((float(start), load))
                del self.readings[g][:-self.forecast.lookback]
        affinity = None if self.affinity is None else self.affinity.tolist()
        return np.asarray(decision_loads(loads.tolist(), self.readings, self.forecast, affinity))
