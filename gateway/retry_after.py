"""How long a refused client should wait (HTTP Retry-After): the queue's length over its recent drain rate.

The engine thread records each request that leaves the queue to start running (a preempted one coming
back is not counted: it does not make room under --max-queued-requests); a refusal divides the queue
by the rate of those departures over the last WINDOW_S seconds. Nothing drained lately: the longest wait.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque

WINDOW_S = 30.0
MIN_S, MAX_S = 1, 60


def retry_after_s(queued: int, departures: list[float], now: float, window_s: float = WINDOW_S,
                  lo: int = MIN_S, hi: int = MAX_S) -> int:
    """Seconds until `queued` requests ahead have drained at the rate of `departures` (timestamps) in
    the last window_s, clamped to lo..hi (a rate over less than a second counts as over one second)."""
    recent = [t for t in departures if now - window_s <= t <= now]
    if not recent:
        return hi
    rate = len(recent) / max(now - min(recent), 1.0)
    return max(lo, min(hi, math.ceil((queued + 1) / rate)))


class DrainRate:
    """Departure timestamps of the last window, written by the engine thread, read by the event loop."""

    def __init__(self, window_s: float = WINDOW_S, clock=time.monotonic):
        self.window_s = window_s
        self.clock = clock
        self._times: deque[float] = deque(maxlen=4096)  # a bound: rates above 4096 per window read as 4096
        self._lock = threading.Lock()

    def record(self, count: int) -> None:
        if count > 0:
            now = self.clock()
            with self._lock:
                self._times.extend([now] * count)

    def retry_after_s(self, queued: int) -> int:
        now = self.clock()
        with self._lock:
            times = list(self._times)
        return retry_after_s(queued, times, now, self.window_s)
