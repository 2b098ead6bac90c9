"""One reading of Prometheus text (a gateway's /metrics) as plain samples, and sums over them."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[dict[str, str], float]  # (labels, value)


@dataclass(frozen=True)
class Snapshot:
    taken_at: float                                    # monotonic seconds, for rates
    samples: dict[str, list[Sample]] = field(default_factory=dict)  # sample name -> its series

    def total(self, name: str, **labels: str) -> float | None:
        """Sum of the series of `name` whose labels include `labels`; None when there is no such series."""
        values = [v for got, v in self.samples.get(name, []) if all(got.get(k) == want for k, want in labels.items())]
        return sum(values) if values else None

    def by_label(self, name: str, label: str) -> dict[str, float]:
        """{value of `label`: sum of the series of `name` with that value}."""
        out: dict[str, float] = {}
        for got, value in self.samples.get(name, []):
            if label in got:
                out[got[label]] = out.get(got[label], 0.0) + value
        return out


def parse_metrics(text: str, taken_at: float) -> Snapshot:
    """The samples of one Prometheus text exposition (raises ValueError on text that is not one)."""
    samples: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return Snapshot(taken_at, samples)


def merged(snapshots: list[Snapshot]) -> Snapshot:
    """Several gateways as one: their series side by side (sums add up); the time is the latest reading's."""
    samples: dict[str, list[Sample]] = {}
    for snap in snapshots:
        for name, series in snap.samples.items():
            samples.setdefault(name, []).extend(series)
    return Snapshot(max(s.taken_at for s in snapshots), samples)
