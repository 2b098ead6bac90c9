"""One `eaas top` frame as text (pure): a TopView and a width in, lines out."""

from __future__ import annotations

from eaas.top.view import TopView

BAR = "█"
EMPTY = "·"


def _n(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:.0f}"
    return f"{value:.{digits}f}"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.1f} ms" if value < 1 else f"{value:.2f} s"


def _compact(value: float) -> str:
    """4 characters or so: 0, 0.5, 12.3, 1234, 12.3k, 1.2M."""
    if value == 0:
        return "0"
    if value >= 1e6:
        return f"{value / 1e6:.1f}M"
    if value >= 1e4:
        return f"{value / 1e3:.1f}k"
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}"


def bar(value: float, biggest: float, width: int) -> str:
    """`width` cells, filled in proportion to value / biggest (the busiest expert fills its bar)."""
    filled = 0 if biggest <= 0 else round(width * value / biggest)
    if value > 0 and filled == 0:
        filled = 1  # any traffic at all is visible
    return BAR * filled + EMPTY * (width - filled)


def header_lines(view: TopView, clock: str) -> list[str]:
    rates = f"rates over {view.interval_s:.1f} s" if view.interval_s else "one reading: no rates"
    lines = [f"eaas top · {view.source} · {clock} · {rates}"]
    if view.running is None and view.tokens_per_s is None:
        return lines  # Redis only: no gateway figures
    done = ", ".join(f"{_n(v)} {s}" for s, v in sorted(view.requests.items())) or "0"
    lines.append(f"tokens/s    {_n(view.tokens_per_s, 1):>8}    requests: running {_n(view.running)}, "
                 f"queued {_n(view.queued)}, refused {_n(view.refused)}, finished {done}")
    lines.append(f"latency     TTFT {_seconds(view.ttft_mean_s)}, ITL {_seconds(view.itl_mean_s)} "
                 f"(means {view.latency_basis})")
    kv = "-"
    if view.kv_used is not None and view.kv_free is not None:
        total = view.kv_used + view.kv_free
        kv = f"{_n(view.kv_used)} used / {_n(view.kv_free)} free ({100 * view.kv_used / total if total else 0:.1f} %)"
    asked = (view.mempool_hits or 0) + (view.mempool_misses or 0)
    hit_rate = f"{100 * (view.mempool_hits or 0) / asked:.1f} % of {_n(asked)} blocks" if asked else "no lookups"
    lines.append(f"KV blocks   {kv}, preemptions {_n(view.preemptions)}, MemPool hits {hit_rate}")
    reasons = ", ".join(f"{r} {_n(v)}" for r, v in sorted(view.rpc_failures.items()) if v)
    failures = f"{_n(view.rpc_failures_in_interval)} in the interval, {_n(sum(view.rpc_failures.values()))} since start"
    lines.append(f"expert RPC  {_n(view.rpc_per_s, 1)}/s, mean {_seconds(view.rpc_mean_s)}; failures {failures}"
                 + (f" ({reasons})" if reasons else ""))
    return lines


def replica_lines(view: TopView) -> list[str]:
    if not view.replicas:
        return ["replicas    (none reported)"]
    lines = ["replicas per group"]
    for row in view.replicas:
        shown = ", ".join(f"{n} {state}" for state, n in row.states.items() if n or state in ("ready", "registered"))
        lines.append(f"  {row.group:<12} experts {row.experts:<10} {shown}")
    return lines


def load_lines(view: TopView, width: int, max_experts: int = 0) -> list[str]:
    """A bar per expert id, in id order; with max_experts, only the busiest ones (busiest first)."""
    load = view.expert_load
    if not load:
        return [f"expert load: {view.load_basis}"]
    total = sum(load.values())
    mean = total / len(load)
    imbalance = f"; busiest/mean {max(load.values()) / mean:.2f}x" if mean > 0 else ""
    lines = [f"expert load, summed over MoE layers: {view.load_basis}{imbalance}"]
    shown = sorted(load)
    if 0 < max_experts < len(load):
        shown = sorted(load, key=lambda e: (-load[e], e))[:max_experts]
        lines.append(f"  ({max_experts} busiest of {len(load)} experts)")
    label_width = len(f"e{max(load)}")
    bar_width = max(10, width - label_width - 22)
    biggest = max(load.values())
    for expert in shown:
        value = load[expert]
        share = 100 * value / total if total else 0.0
        lines.append(f"  {f'e{expert}':<{label_width}} {bar(value, biggest, bar_width)} {share:5.1f} % "
                     f"{_compact(value):>7}")
    return lines


def render_frame(view: TopView, clock: str, width: int = 80, max_experts: int = 0) -> str:
    """The whole frame; `clock` is the wall time to print (passed in: the function stays pure)."""
    return "\n".join([*header_lines(view, clock), *replica_lines(view), "",
                      *load_lines(view, width, max_experts)]) + "\n"
