"""`eaas plan --report DIR`: PNG plots (load vs replicas per group, expert popularity heatmap, cost vs SLO
per policy) and an index.html that shows them with the JSON summary."""

from __future__ import annotations

import html
import json
from pathlib import Path

import numpy as np

COLORS = {"static": "tab:gray", "reactive": "tab:blue", "predictive": "tab:green"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_load_vs_replicas(path: Path, result, target: float, groups: int = 4) -> None:
    plt = _pyplot()
    any_outcome = next(iter(result.outcomes.values()))
    hottest = np.argsort(-any_outcome.minute_load.mean(axis=0))[:groups]
    fig, axes = plt.subplots(len(hottest), 1, figsize=(10, 2.2 * len(hottest)), sharex=True)
    hours = np.arange(len(any_outcome.minute_load)) / 60
    for ax, g in zip(np.atleast_1d(axes), hottest):
        ax.plot(hours, any_outcome.minute_load[:, g] / target, color="black", lw=0.6, label="load / target")
        for name, o in result.outcomes.items():
            ax.step(hours, o.minute_replicas[:, g], where="post", color=COLORS.get(name), lw=1.0, label=name)
        ax.set_ylabel(f"group g{g}")
    np.atleast_1d(axes)[0].legend(loc="upper left", fontsize=7, ncol=4)
    np.atleast_1d(axes)[-1].set_xlabel("hours")
    fig.suptitle("replicas per group vs load (in replicas' worth at the target), hottest groups")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_popularity(path: Path, shares: np.ndarray) -> None:
    plt = _pyplot()
    order = np.argsort(-shares.mean(axis=0))
    step = max(1, len(shares) // 480)
    rel = shares[::step, order] * shares.shape[1]  # x the mean share
    fig, ax = plt.subplots(figsize=(10, 4))
    im = ax.imshow(np.log10(rel.T), aspect="auto", cmap="magma", vmin=-1.5, vmax=1.5,
                   extent=(0, len(shares) / 60, shares.shape[1], 0))
    fig.colorbar(im, ax=ax, label="log10(share / mean share)")
    ax.set_xlabel("hours")
    ax.set_ylabel("expert (hottest first)")
    ax.set_title(f"expert popularity; hottest expert {rel.max():.0f}x the mean at its peak")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_frontier(path: Path, table: dict, curves: dict | None = None) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for name, points in (curves or {}).items():
        ax.plot([p["ratio"] for p in points], [p["slo_attainment"] * 100 for p in points], "o-", ms=3, lw=1,
                color=COLORS.get(name), alpha=0.6)
        for p in points:
            label = f"h{p['headroom']:g}" if p.get("headroom") is not None else f"x{p['target_x']:g}"
            ax.annotate(label, (p["ratio"], p["slo_attainment"] * 100), fontsize=6,
                        textcoords="offset points", xytext=(3, -8), color=COLORS.get(name))
    for name, row in table.items():
        ax.scatter(row["ratio"], row["slo_attainment"] * 100, color=COLORS.get(name), s=60, label=name, zorder=3)
    ax.axhline(99, color="red", lw=0.6, ls="--")
    ax.set_xlabel("replica-seconds / static")
    ax.set_ylabel("% of tokens within the ITL SLO")
    ax.set_title("cost vs SLO (lines: each policy at headrooms h, the share of the SLO a full step takes at "
                 "the target)" if curves else "cost vs SLO per policy", fontsize=8)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_report(directory: str | Path, scenario, result, table: dict, curves: dict | None = None) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plot_load_vs_replicas(out / "load_vs_replicas.png", result, result.target_per_replica)
    plot_popularity(out / "popularity.png", scenario.popularity.shares)
    plot_frontier(out / "frontier.png", table, curves)
    (out / "summary.json").write_text(json.dumps({"policies": table, "frontier": curves or {}}, indent=1) + "\n")
    dep = scenario.deployment
    rows = "".join(
        f"<tr><td>{html.escape(n)}</td><td>{r['ratio']:.3f}</td><td>{r['mean_replicas']:.1f}</td>"
        f"<td>{r['slo_attainment'] * 100:.2f}%</td><td>{r['itl_p99_s'] * 1e3:.0f} ms</td>"
        f"<td>{r['ttft_p99_s']:.2f} s</td><td>{r['failed_requests']}</td></tr>" for n, r in table.items())
    frontier_rows = "".join(
        f"<tr><td>{html.escape(name)}</td><td>{p['headroom'] if p.get('headroom') is not None else '-'}</td>"
        f"<td>x{p['target_x']:g}</td><td>{p['ratio']:.3f}</td><td>{p['slo_attainment'] * 100:.2f}%</td>"
        f"<td>{p['violating_tokens']:,.0f}</td></tr>" for name, points in (curves or {}).items() for p in points)
    frontier_table = (f"<table border=1 cellpadding=4><tr><th>policy</th><th>headroom</th><th>target</th>"
                      f"<th>replica-s / static</th><th>tokens within SLO</th><th>violating tokens</th></tr>"
                      f"{frontier_rows}</table>") if frontier_rows else ""
    page = f"""<!doctype html><meta charset="utf-8"><title>eaas plan</title>
<h1>eaas plan</h1>
<p>{len(scenario.trace)} requests over {scenario.trace.duration_s / 3600:.2f} h; {dep.experts} experts, top-{dep.top_k},
{dep.moe_layers} MoE layers, {dep.experts_per_group} per group ({html.escape(scenario.placement)} placement);
SLO {scenario.slo_itl_s * 1e3:.0f} ms per token; profile {html.escape(scenario.profile.name)};
RPCs per step {result.rpcs_per_step:.0f}.</p>
<table border=1 cellpadding=4><tr><th>policy</th><th>replica-s / static</th><th>mean replicas</th>
<th>tokens within SLO</th><th>ITL p99</th><th>TTFT p99</th><th>failed</th></tr>{rows}</table>
<h2>Cost vs SLO</h2><img src="frontier.png">{frontier_table}
<h2>Replicas vs load, hottest groups</h2><img src="load_vs_replicas.png">
<h2>Expert popularity</h2><img src="popularity.png">
"""
    (out / "index.html").write_text(page)
    return out / "index.html"
