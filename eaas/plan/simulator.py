"""Discrete-time replay of one deployment: gateways batch decode steps, expert groups with replicas serve
each layer's RPCs, the autoscaler steps on its interval, replicas start after a delay and fail at a rate.

Each tick (1 s): arrivals queue for a gateway slot; admitted requests prefill (their prompt tokens join the
tick's steps) and then decode one token per step. A step takes, per MoE layer, the gateway's own time
for its batch plus the slowest group's RPC: a group's tokens of that layer spread over its live replicas
(at most one RPC per gateway per replica). Every active sequence advances by tick/step tokens, so a
request finishes when the deployment's progress counter passes its start + response length (a heap).
Tokens of a step slower than the SLO violate it. Served (token, expert) pairs, summed over layers, are
counted per group in 10-second windows exactly as gateways write them to Redis; the autoscaler reads the
last complete windows. A group with no live replica stalls every step; a stall longer than the request
timeout fails the requests in flight.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from eaas.plan.service import ServiceProfile
from eaas.plan.trace import Trace

LOAD_BUCKET_S = 10  # the gateways' load window (docs/redis-schema.md)


@dataclass(frozen=True)
class Deployment:
    experts: int = 256
    top_k: int = 8
    moe_layers: int = 58
    experts_per_group: int = 8
    gateways: int = 16
    max_batch_per_gateway: int = 256
    min_replicas: int = 2
    max_replicas: int = 64
    startup_s: float = 60.0
    prefill_chunk_tokens: int = 512


@dataclass(frozen=True)
class Autoscaling:
    target_per_replica: float      # (token, expert) pairs/s per replica, summed over layers (the load unit)
    interval_s: float = 15.0
    load_windows: int = 3
    scale_up_window_s: float = 0.0
    scale_down_window_s: float = 300.0


@dataclass(frozen=True)
class Faults:
    failures_per_minute: float = 0.0
    request_timeout_s: float = 30.0
    seed: int = 0


@dataclass
class Outcome:
    policy: str
    duration_s: float
    replica_seconds: float
    served_tokens: float
    good_tokens: float          # served in steps within the SLO
    itl_p99_s: float
    itl_p50_s: float
    ttft_p99_s: float
    failed_requests: int
    requests: int
    minute_replicas: np.ndarray  # [minutes, groups] desired replicas at each minute's end
    minute_load: np.ndarray      # [minutes, groups] served pairs/s in the minute
    minute_itl: np.ndarray       # [minutes] token-weighted mean step seconds
    mean_batch_per_gateway: float  # sequences per gateway step, averaged over ticks with traffic
    last_token_s: float            # end of the last tick that produced a token
    window_loads: np.ndarray       # [10 s windows, groups] served pairs, as gateways write them to Redis
    tick_step_s: np.ndarray        # [ticks] the step time of each tick (0 while stalled)
    tick_tokens: np.ndarray        # [ticks] tokens served in each tick
    tick_sequences: np.ndarray     # [ticks] sequences in each tick's steps (all gateways)

    @property
    def slo_attainment(self) -> float:
        return self.good_tokens / self.served_tokens if self.served_tokens else 1.0


def weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float:
    keep = weights > 0
    if not keep.any():
        return 0.0
    v, w = values[keep], weights[keep]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][np.searchsorted(cum, q * cum[-1])])


class Replicas:
    """Desired, live and starting replicas per group; starting ones become live after the start-up delay."""

    def __init__(self, initial: np.ndarray, startup_s: float):
        self.desired = initial.astype(np.int64).copy()
        self.live = initial.astype(np.int64).copy()  # the trace starts with a warm deployment
        self.starting = [deque() for _ in initial]   # ready times, ascending
        self.startup_s = startup_s
        self.next_ready = math.inf
        self.version = 0  # bumped whenever live or desired counts change
        self._total = int(self.desired.sum())

    def set_desired(self, now: float, desired: np.ndarray) -> None:
        for g in np.flatnonzero(desired != self.desired).tolist():
            want, have = int(desired[g]), int(self.desired[g])
            if want > have:
                self.starting[g].extend([now + self.startup_s] * (want - have))
            else:
                for _ in range(have - want):  # cancel starting replicas first, then stop live ones
                    if self.starting[g]:
                        self.starting[g].pop()
                    else:
                        self.live[g] -= 1
            self.desired[g] = want
            self._total += want - have
            self.version += 1
        self._refresh_next()

    def fail(self, now: float, group: int) -> None:
        """A live replica dies; its Deployment restarts it (it counts as desired all along)."""
        self.live[group] -= 1
        self.starting[group].append(now + self.startup_s)
        self.version += 1
        self._refresh_next()

    @property
    def total_desired(self) -> int:
        return self._total

    def advance(self, now: float) -> None:
        if now < self.next_ready:
            return
        for g, queue in enumerate(self.starting):
            while queue and queue[0] <= now:
                queue.popleft()
                self.live[g] += 1
                self.version += 1
        self._refresh_next()

    def _refresh_next(self) -> None:
        self.next_ready = min((q[0] for q in self.starting if q), default=math.inf)


def step_seconds(tokens_per_gateway: float, group_share: np.ndarray, live: np.ndarray, dep: Deployment,
                 profile: ServiceProfile) -> float:
    """One decode step of one gateway: per layer, its own time + the slowest group's RPC."""
    return StepModel(group_share, live, dep, profile).seconds(tokens_per_gateway)


class StepModel:
    """Step time for fixed shares and live replicas. A group's RPC carries tokens x gateways x top_k x share
    pairs spread over its live replicas (at most one per gateway); RPC time grows with batch, so the
    slowest group is the one with the most pairs per replica."""

    def __init__(self, group_share: np.ndarray, live: np.ndarray, dep: Deployment, profile: ServiceProfile):
        busy = group_share > 0
        self.stalled = bool((live[busy] <= 0).any())
        parallel = np.minimum(np.maximum(live, 1), dep.gateways)
        coef = dep.gateways * dep.top_k * group_share / parallel
        self.worst = float(coef[busy].max()) if busy.any() else 0.0
        self.layers = dep.moe_layers
        self.profile = profile

    def seconds(self, sequences_per_gateway: float, tokens_per_gateway: float | None = None) -> float:
        """Both parts follow the tokens in the forward: a decoding sequence brings one, a prompt being
        prefilled its chunk, and the gateway's attention and dense layers run over every one of them as the
        experts do (the gateway curve was measured in decode streams: one token each)."""
        if self.stalled:
            return math.inf
        n = max(1.0, sequences_per_gateway)
        tokens = n if tokens_per_gateway is None else max(n, tokens_per_gateway)
        rpc = self.profile.expert_call.at(max(1.0, tokens * self.worst))
        return self.layers * (self.profile.gateway_layer.at(tokens) + rpc)


def failure_times(faults: Faults, duration: int) -> list[float]:
    """Poisson failure instants (seconds) over the replay."""
    if faults.failures_per_minute <= 0:
        return []
    rng = np.random.default_rng(faults.seed)
    n = rng.poisson(faults.failures_per_minute * duration / 60.0)
    return sorted(rng.uniform(0, duration, n).tolist())


def simulate(trace: Trace, policy, initial: np.ndarray, group_shares_by_minute: np.ndarray, dep: Deployment,
             autoscaling: Autoscaling, profile: ServiceProfile, slo_itl_s: float, faults: Faults = Faults(),
             duration_s: float | None = None, progress=None, tick_s: float = 1.0,
             step_stalls=None) -> Outcome:
    """Replay `trace` under `policy` (an object with decide(now, current, loads, windows) -> desired replicas;
    loads: per group, pairs/s over the last `load_windows` complete windows; windows: those windows as
    (start second, per-group pairs/s) pairs, oldest first).

    tick_s: the replay's time step; shorter than the steps it models (1 s for multi-layer models whose
    steps take seconds, ~10 ms to compare with a small model's tens-of-ms steps).
    step_stalls: a StepStalls (eaas/plan/stalls.py): each tick's step plus a measured stall, as a real
    system's step varies at the same load; None: the modelled step alone.
    """
    duration = float(math.ceil(duration_s if duration_s is not None else trace.duration_s + 1))
    ticks = int(math.ceil(duration / tick_s))
    groups = group_shares_by_minute.shape[1]
    pick = np.random.default_rng(faults.seed + 1)
    failures = deque(failure_times(faults, duration))
    replicas = Replicas(initial, dep.startup_s)
    capacity = dep.gateways * dep.max_batch_per_gateway
    pairs_per_token = dep.top_k * dep.moe_layers
    arrivals = np.searchsorted(trace.arrival_s, np.arange(ticks + 1) * tick_s, side="left").tolist()
    prompts, responses = trace.prompt_tokens.tolist(), trace.response_tokens.tolist()
    arrival_s = trace.arrival_s.tolist()
    waiting: deque[int] = deque()
    active: list[float] = []  # finish thresholds on the progress counter
    progress_tokens = 0.0
    ttft = np.full(len(trace), np.nan)
    n_buckets = int(duration // LOAD_BUCKET_S) + 2
    bucket_tokens = np.zeros(n_buckets)  # tokens (decode + prefill) per window; x share = pairs per group
    minutes = int(math.ceil(duration / 60))
    shares = group_shares_by_minute[np.minimum(np.arange(minutes), len(group_shares_by_minute) - 1)]
    minute_replicas = np.zeros((minutes, groups))
    tick_step = np.zeros(ticks)
    tick_tokens = np.zeros(ticks)
    tick_sequences = np.zeros(ticks)
    replica_seconds = 0.0
    served = good = 0.0
    failed = 0
    stalled_s = 0.0
    next_decision = autoscaling.interval_s
    next_arrival = 0
    model, model_key = None, None
    for t in range(ticks):
        now = t * tick_s
        minute = min(int(now // 60), minutes - 1)
        replicas.advance(now)
        while failures and failures[0] < now + tick_s:
            failures.popleft()
            live = replicas.live
            if live.sum() > 0:
                replicas.fail(now, int(pick.choice(groups, p=live / live.sum())))
        if now >= next_decision:
            complete = int(now // LOAD_BUCKET_S)  # windows before the open one
            first = max(0, complete - autoscaling.load_windows)
            windows = np.array([bucket_tokens[b] * shares[b * LOAD_BUCKET_S // 60] for b in range(first, complete)]
                               ).reshape(-1, groups) * (pairs_per_token / LOAD_BUCKET_S)  # [window, group] pairs/s
            # absent windows count as 0, as the operator reads them (operator/load.py)
            loads = windows.sum(axis=0) / autoscaling.load_windows if complete > first else np.zeros(groups)
            window_starts = [b * LOAD_BUCKET_S for b in range(first, complete)]
            replicas.set_desired(now, np.clip(policy.decide(now, replicas.desired.copy(), loads,
                                                            list(zip(window_starts, windows))),
                                              dep.min_replicas, dep.max_replicas))
            next_decision += autoscaling.interval_s
        if model_key != (minute, replicas.version):
            model_key = (minute, replicas.version)
            model = StepModel(shares[minute], replicas.live, dep, profile)
        last = arrivals[t + 1]
        waiting.extend(range(next_arrival, last))
        next_arrival = last
        prefill = 0
        admitted = []
        room = 0 if model.stalled else capacity - len(active)  # a stalled deployment admits no one
        while waiting and len(admitted) < room:
            i = waiting.popleft()
            admitted.append(i)
            prefill += prompts[i]
        n = len(active) + len(admitted)
        step = model.seconds(n / dep.gateways)
        if prefill and math.isfinite(step):  # prompt tokens share the tick's steps (chunked prefill)
            for _ in range(2):
                step = model.seconds(n / dep.gateways, (n + prefill * min(1.0, step / tick_s)) / dep.gateways)
        if step_stalls is not None and math.isfinite(step):
            step += step_stalls.draw(step)
        for i in admitted:
            ttft[i] = max(0.0, now - arrival_s[i]) + (math.ceil(prompts[i] / dep.prefill_chunk_tokens) + 1) * step
            heapq.heappush(active, progress_tokens + responses[i])
        if math.isfinite(step):
            stalled_s = 0.0
            end = progress_tokens + tick_s / step
            tokens = 0.0
            while active and active[0] <= end:
                tokens += heapq.heappop(active) - progress_tokens
            tokens += len(active) * (end - progress_tokens)
            progress_tokens = end
            served += tokens
            if step <= slo_itl_s:
                good += tokens
            bucket_tokens[int(now // LOAD_BUCKET_S)] += tokens + prefill
            tick_step[t] = step
            tick_tokens[t] = tokens
            tick_sequences[t] = n
        else:
            stalled_s += tick_s
            if stalled_s > faults.request_timeout_s and active:
                failed += len(active)
                active.clear()
        replica_seconds += replicas.total_desired * tick_s
        minute_replicas[minute] = replicas.desired  # the minute's last tick wins
        if progress is not None and t % 600 == 599:
            progress.update(600 * tick_s)
    done = ~np.isnan(ttft)
    busy = tick_tokens > 0
    bucket_minute = np.minimum(np.arange(n_buckets) * LOAD_BUCKET_S // 60, minutes - 1)
    window_loads = bucket_tokens[:, None] * shares[bucket_minute] * pairs_per_token
    tick_minute = np.minimum((np.arange(ticks) * tick_s // 60).astype(np.int64), minutes - 1)
    minute_tokens = np.bincount(tick_minute, tick_tokens, minutes)
    minute_step_tokens = np.bincount(tick_minute, tick_tokens * tick_step, minutes)
    minute_load = np.zeros((minutes, groups))
    np.add.at(minute_load, bucket_minute, window_loads / 60.0)
    return Outcome(
        policy=getattr(policy, "name", "policy"), duration_s=float(duration), replica_seconds=replica_seconds,
        served_tokens=served, good_tokens=good, itl_p99_s=weighted_quantile(tick_step, tick_tokens, 0.99),
        itl_p50_s=weighted_quantile(tick_step, tick_tokens, 0.5),
        ttft_p99_s=float(np.quantile(ttft[done], 0.99)) if done.any() else 0.0, failed_requests=failed,
        requests=len(trace), minute_replicas=minute_replicas, minute_load=minute_load,
        minute_itl=np.divide(minute_step_tokens, minute_tokens, out=np.zeros(minutes), where=minute_tokens > 0),
        mean_batch_per_gateway=float(np.mean((tick_tokens * tick_step)[busy]) / tick_s / dep.gateways)
        if busy.any() else 0.0,
        last_token_s=float(np.flatnonzero(busy)[-1] + 1) * tick_s if busy.any() else 0.0, window_loads=window_loads,
        tick_step_s=tick_step, tick_tokens=tick_tokens, tick_sequences=tick_sequences)
