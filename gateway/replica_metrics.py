"""`eaas_gateway_expert_replicas{group, experts, state}`: the replicas per expert group the gateway routes to.

Read from the replica tables at scrape time (no bookkeeping on the data path). Every state is reported for
every group, zeros included, so a dashboard's stacked series and `eaas top` see a group with no ready
replica as 0 rather than as missing. Several backends in one process (tests) add up.
"""

from __future__ import annotations

import weakref
from collections import Counter as Tally

from prometheus_client.core import GaugeMetricFamily

from eaas.topology import format_expert_ids

REPLICA_STATES = ("ready", "quarantined", "refused", "unverified")
NAME = "eaas_gateway_expert_replicas"
DOC = "Expert replicas in the gateway's table, by group, the expert ids it holds and state."
LABELS = ["group", "experts", "state"]


def replica_samples(groups: list[tuple[str, tuple[int, ...], list[str]]]) -> dict[tuple[str, str, str], int]:
    """(group name, expert ids, replica states) per group -> {(group, experts, state): replicas}."""
    out: dict[tuple[str, str, str], int] = {}
    for name, experts, states in groups:
        counts = Tally(states)
        for state in REPLICA_STATES:
            key = (name, format_expert_ids(experts), state)
            out[key] = out.get(key, 0) + counts.get(state, 0)
    return out


class ReplicaStateCollector:
    """Registered once per registry; each ReplicaTable adds itself (weakly) and is read at scrape time."""

    def __init__(self, registry):
        self._tables: weakref.WeakSet = weakref.WeakSet()
        registry.register(self)

    def watch(self, table) -> None:
        self._tables.add(table)

    def forget(self, table) -> None:
        self._tables.discard(table)

    def describe(self):
        return [GaugeMetricFamily(NAME, DOC, labels=LABELS)]

    def collect(self):
        groups = [(g.spec.name, g.spec.expert_ids, [r.state for r in g.replicas])
                  for table in list(self._tables) for g in table.snapshot()[0]]
        family = GaugeMetricFamily(NAME, DOC, labels=LABELS)
        for labels, count in sorted(replica_samples(groups).items()):
            family.add_metric(list(labels), count)
        yield family
