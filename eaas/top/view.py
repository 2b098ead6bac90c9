"""What `eaas top` shows, computed from two gateway readings and/or the Redis load windows (pure).

Rates are the difference of two readings divided by the time between them. Per-expert load is the
token-expert pairs routed to each expert id **summed over MoE layers** (what the gateway counts and the
autoscaler reads): over the last interval when it saw traffic, else the deployment's Redis windows, else
the totals since the gateway started, so an idle system still shows its routers' popularity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from eaas.topology import format_expert_ids, parse_expert_ids
from eaas.top.snapshot import Snapshot

ROUTED = "eaas_gateway_tokens_routed_total"
REPLICAS = "eaas_gateway_expert_replicas"


@dataclass(frozen=True)
class RedisFacts:
    """Read from a deployment's Redis: tokens/s per expert over complete load windows, registered replicas."""
    expert_rates: dict[int, float]
    window_s: float
    replicas: dict[str, tuple[tuple[int, ...], int]]  # group -> (expert ids, registered replicas)


@dataclass(frozen=True)
class GroupReplicas:
    group: str
    experts: str                      # "0-3"
    states: dict[str, int]            # ready / quarantined / refused / unverified (registered: from Redis)


@dataclass(frozen=True)
class TopView:
    source: str
    interval_s: float | None = None   # between the two readings; None: one reading (no rates)
    tokens_per_s: float | None = None
    running: float | None = None
    queued: float | None = None
    requests: dict[str, float] = field(default_factory=dict)     # finished since start, by status
    refused: float | None = None
    preemptions: float | None = None
    kv_used: float | None = None
    kv_free: float | None = None
    ttft_mean_s: float | None = None
    itl_mean_s: float | None = None
    latency_basis: str = ""
    rpc_per_s: float | None = None
    rpc_mean_s: float | None = None
    rpc_failures: dict[str, float] = field(default_factory=dict)   # since start, by reason
    rpc_failures_in_interval: float | None = None
    mempool_hits: float | None = None
    mempool_misses: float | None = None
    expert_load: dict[int, float] = field(default_factory=dict)
    load_basis: str = ""
    replicas: list[GroupReplicas] = field(default_factory=list)


def increase(before: float, now: float) -> float:
    """What a counter gained; a counter that went down was reset (a restarted gateway) and counts from 0,
    as Prometheus' rate() takes it."""
    return now - before if now >= before else now


def _delta(prev: Snapshot | None, cur: Snapshot, name: str, **labels: str) -> float | None:
    now = cur.total(name, **labels)
    if prev is None or now is None:
        return None
    return increase(prev.total(name, **labels) or 0.0, now)


def _mean(prev: Snapshot | None, cur: Snapshot, histogram: str) -> tuple[float | None, bool]:
    """(mean of a histogram over the interval if it saw observations, else since start; in_interval)."""
    count, total = _delta(prev, cur, histogram + "_count"), _delta(prev, cur, histogram + "_sum")
    if count:
        return total / count, True
    count, total = cur.total(histogram + "_count"), cur.total(histogram + "_sum")
    return (total / count if count else None), False


def _per_expert(snap: Snapshot | None) -> dict[int, float]:
    if snap is None:
        return {}
    return {int(e): v for e, v in snap.by_label(ROUTED, "expert").items()}


def _replicas(cur: Snapshot | None, redis: RedisFacts | None) -> list[GroupReplicas]:
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for labels, value in (cur.samples.get(REPLICAS, []) if cur else []):
        states = rows.setdefault((labels.get("group", "?"), labels.get("experts", "")), {})
        state = labels.get("state", "?")
        states[state] = max(states.get(state, 0), int(value))  # several gateways see the same replicas
    if not rows and redis is not None:
        rows = {(g, format_expert_ids(e)): {"registered": n} for g, (e, n) in redis.replicas.items()}
    return [GroupReplicas(g, e, s) for (g, e), s in sorted(rows.items(), key=lambda kv: _first_expert(kv[0][1]))]


def _first_expert(experts: str) -> int:
    try:
        return parse_expert_ids(experts)[0]
    except ValueError:
        return 1 << 30


def known_experts(replicas: list[GroupReplicas]) -> set[int]:
    """Every expert id some group holds: experts nobody routed to still get an (empty) bar."""
    out: set[int] = set()
    for row in replicas:
        try:
            out.update(parse_expert_ids(row.experts))
        except ValueError:
            continue
    return out


def expert_load(prev: Snapshot | None, cur: Snapshot | None, interval_s: float | None,
                redis: RedisFacts | None) -> tuple[dict[int, float], str]:
    """({expert: load}, what the numbers are) by the rule in the module docstring."""
    now, before = _per_expert(cur), _per_expert(prev)
    if interval_s and prev is not None:
        window = {e: increase(before.get(e, 0.0), n) / interval_s for e, n in now.items()}
        if any(window.values()):
            return window, f"tokens/s over the last {interval_s:.1f} s"
    if redis is not None and any(redis.expert_rates.values()):
        return dict(redis.expert_rates), f"tokens/s over the last {redis.window_s:.0f} s of Redis load windows"
    if any(now.values()):
        quiet = f" (none in the last {interval_s:.1f} s)" if interval_s else ""
        return now, f"token-expert pairs since the gateway started{quiet}"
    return {}, "no expert traffic seen yet"


def top_view(prev: Snapshot | None, cur: Snapshot | None, source: str, redis: RedisFacts | None = None) -> TopView:
    """The view of one frame: `prev` None (or `cur` None: Redis only) gives what one reading can tell."""
    interval = (cur.taken_at - prev.taken_at) if (prev is not None and cur is not None) else None
    interval = interval if interval and interval > 0 else None
    replicas = _replicas(cur, redis)
    load, basis = expert_load(prev, cur, interval, redis)
    load = {**{e: 0.0 for e in known_experts(replicas)}, **load}
    if cur is None:
        return TopView(source=source, expert_load=load, load_basis=basis, replicas=replicas)

    def rate(name: str, **labels: str) -> float | None:
        d = _delta(prev, cur, name, **labels)
        return None if d is None or interval is None else d / interval

    ttft, ttft_now = _mean(prev, cur, "eaas_gateway_time_to_first_token_seconds")
    itl, itl_now = _mean(prev, cur, "eaas_gateway_inter_token_latency_seconds")
    rpc_calls = _delta(prev, cur, "eaas_gateway_expert_rpc_seconds_count")
    rpc_mean, _ = _mean(prev, cur, "eaas_gateway_expert_rpc_seconds")
    return TopView(
        source=source, interval_s=interval,
        tokens_per_s=rate("eaas_gateway_generated_tokens_total"),
        running=cur.total("eaas_gateway_running_sequences"), queued=cur.total("eaas_gateway_queue_depth"),
        requests=cur.by_label("eaas_gateway_requests_total", "status"),
        refused=cur.total("eaas_gateway_requests_refused_total"),
        preemptions=cur.total("eaas_gateway_preemptions_total"),
        kv_used=cur.total("eaas_gateway_kv_blocks_used"), kv_free=cur.total("eaas_gateway_kv_blocks_free"),
        ttft_mean_s=ttft, itl_mean_s=itl,
        latency_basis="over the interval" if (ttft_now or itl_now) else "since start",
        rpc_per_s=None if rpc_calls is None or interval is None else rpc_calls / interval, rpc_mean_s=rpc_mean,
        rpc_failures=cur.by_label("eaas_gateway_expert_rpc_failures_total", "reason"),
        rpc_failures_in_interval=None if interval is None else (  # no series yet: no failure yet
            _delta(prev, cur, "eaas_gateway_expert_rpc_failures_total") or 0.0),
        mempool_hits=cur.total("eaas_mempool_hits_total"), mempool_misses=cur.total("eaas_mempool_misses_total"),
        expert_load=load, load_basis=basis, replicas=replicas,
    )
