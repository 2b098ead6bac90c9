"""Every metric eaas registers, read off real registries (the code's own metric sets), and the table of
docs/metrics.md: the two must agree, and dashboards may name only these."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

REPO = Path(__file__).resolve().parents[1]
METRICS_DOC = REPO / "docs/metrics.md"

# The series names Prometheus stores for a family of each type.
SERIES_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count", "_created")}


@dataclass(frozen=True)
class MetricInfo:
    name: str              # as documented and queried: counters with _total, histograms by their base name
    type: str              # counter | gauge | histogram
    labels: tuple[str, ...]

    def series(self) -> set[str]:
        base = self.name[: -len("_total")] if self.type == "counter" else self.name
        return {base + suffix for suffix in SERIES_SUFFIXES[self.type]}


def _info(name: str, kind: str, labels) -> MetricInfo:
    return MetricInfo(name + "_total" if kind == "counter" else name, kind, tuple(sorted(labels)))


def registered_metrics() -> dict[str, MetricInfo]:
    """Every metric of the gateway, its expert RPCs, the MemPool and an expert server, registered into one
    fresh registry by the same constructors the processes call."""
    from eaas.expert_service.metrics import ExpertServerMetrics
    from eaas.gateway.expert_rpc_metrics import ExpertRpcMetrics
    from eaas.gateway.metrics import GatewayMetrics
    from eaas.mempool.metrics import mempool_metrics

    registry = CollectorRegistry()
    GatewayMetrics(registry)
    ExpertRpcMetrics.for_registry(registry)
    mempool_metrics(registry)
    ExpertServerMetrics(registry)
    out: dict[str, MetricInfo] = {}
    for collector in registry._collector_to_names:  # labels of label-only families are not in collect()
        if hasattr(collector, "_labelnames") and hasattr(collector, "_type"):  # Counter, Gauge, Histogram
            infos = [_info(collector._name, collector._type, collector._labelnames)]
        else:  # a custom collector: its describe() families carry their label names
            infos = [_info(f.name, f.type, f._labelnames) for f in collector.describe()]
        for info in infos:
            assert info.name not in out, f"{info.name} registered twice"
            out[info.name] = info
    return out


def exported_series() -> set[str]:
    """Every series name a PromQL expression may use."""
    return {s for info in registered_metrics().values() for s in info.series()}


def documented_metrics(text: str | None = None) -> dict[str, MetricInfo]:
    """The rows of docs/metrics.md's table: | `name` | type | `label`, ... | exported by | meaning |."""
    text = METRICS_DOC.read_text() if text is None else text
    out: dict[str, MetricInfo] = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`(eaas_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if m:
            labels = tuple(sorted(re.findall(r"`(\w+)`", m.group(3))))
            assert m.group(1) not in out, f"{m.group(1)} documented twice"
            out[m.group(1)] = MetricInfo(m.group(1), m.group(2), labels)
    return out
