"""The gateway's table of expert replicas: which servers hold which experts, and whether each may serve.

A replica is admitted ("ready") once its health check passes and its Info matches this gateway's model
(else "refused", for good); one that fails a request is "quarantined" and a background prober re-admits it
once health and Info pass again. Discovery replaces the table (`update`); kept addresses keep their state.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
import torch

from eaas.gateway.dispatch import owner_table, pick_with_fallback, refusal
from eaas.logs import log_event
from eaas.protos import expert_pb2
from eaas.rpc.transport import ExpertTransport

log = logging.getLogger("eaas.gateway.replica_table")


@dataclass(frozen=True)
class GroupSpec:
    """One expert group: the expert ids it holds (in every MoE layer) and its replicas' addresses."""

    expert_ids: tuple[int, ...]
    addresses: tuple[str, ...]
    name: str = ""


@dataclass(eq=False)
class Replica:
    address: str
    state: str = "unverified"  # unverified -> ready | quarantined | refused
    outstanding: int = 0
    info: expert_pb2.ServerInfo | None = None  # kept while quarantined: it was admitted once


@dataclass(eq=False)
class Group:
    spec: GroupSpec
    replicas: list[Replica]
    cursor: int = 0

    def known_info(self) -> expert_pb2.ServerInfo | None:
        return next((r.info for r in self.replicas if r.info is not None and r.state != "refused"), None)


def normalized(groups: Iterable) -> list[GroupSpec]:
    """GroupSpecs (or (expert_ids, [address, ...]) pairs) sorted by first expert id, each named."""
    specs = [g if isinstance(g, GroupSpec) else GroupSpec(tuple(sorted(g[0])), tuple(g[1])) for g in groups]
    if not specs or any(not s.expert_ids or not s.addresses for s in specs):
        raise ValueError("the replica table needs at least one group, each with expert ids and addresses")
    return sorted((GroupSpec(tuple(sorted(s.expert_ids)), tuple(s.addresses), s.name or f"g{i}")
                   for i, s in enumerate(specs)), key=lambda s: min(s.expert_ids))


class ReplicaTable:
    """Replicas by group, their states and outstanding counts (one lock), and the prober thread."""

    def __init__(self, groups: Iterable, *, fingerprint: str, layers: Iterable[int] | None,
                 transport: ExpertTransport, failures, connect_timeout_s: float = 5.0,
                 probe_interval_s: float = 0.5):
        self.fingerprint = fingerprint
        self.layers = None if layers is None else set(layers)
        self.transport = transport
        self.failures = failures  # Counter with a "reason" label: refusals are counted there
        self.connect_timeout_s = connect_timeout_s
        self.probe_interval_s = probe_interval_s
        self._lock = threading.Lock()
        self._groups: list[Group] = []
        self._owner = owner_table([])
        self._retired: list[Replica] = []
        self._closed = threading.Event()
        self._wake = threading.Event()
        self.update(groups)
        self._prober = threading.Thread(target=self._probe_loop, name="expert-replica-prober", daemon=True)
        self._prober.start()

    def update(self, groups: Iterable) -> None:
        """Replace the table. Kept addresses keep their state; new ones are verified before this returns."""
        specs = normalized(groups)
        owner = owner_table([s.expert_ids for s in specs])
        with self._lock:
            old = {(r.address, g.spec.expert_ids): r for g in self._groups for r in g.replicas}
            new = [Group(s, [old.pop((a, s.expert_ids), None) or Replica(a) for a in s.addresses]) for s in specs]
            self._retired.extend(old.values())
        fresh = [(g, r) for g in new for r in g.replicas if r.state == "unverified"]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(fresh)))) as pool:
            list(pool.map(lambda gr: self._verify(*gr), fresh))
        with self._lock:
            self._groups, self._owner = new, owner

    def snapshot(self) -> tuple[list[Group], torch.Tensor]:
        """The groups and owner table of now (a later update replaces both, never mutates them)."""
        with self._lock:
            return self._groups, self._owner

    def specs(self) -> list[GroupSpec]:
        with self._lock:
            return [g.spec for g in self._groups]

    def states(self) -> dict[str, str]:
        """address -> ready | quarantined | refused | unverified, for status pages and tests."""
        with self._lock:
            return {r.address: r.state for g in self._groups for r in g.replicas}

    def describe(self, group: Group) -> str:
        with self._lock:
            return ", ".join(f"{r.address}={r.state}" for r in group.replicas)

    # ---- one attempt's replica ------------------------------------------------------------------
    def acquire(self, group: Group, tried: set[int]) -> Replica | None:
        """Reserve the replica for the next attempt (see pick_with_fallback); None if no replica is left."""
        with self._lock:
            replicas = group.replicas
            index = pick_with_fallback([r.state for r in replicas], [r.info is not None for r in replicas],
                                       [r.outstanding for r in replicas], group.cursor, tried)
            if index is None:
                return None
            tried.add(index)
            group.cursor = index + 1
            replicas[index].outstanding += 1
            return replicas[index]

    def release(self, replica: Replica) -> None:
        with self._lock:
            replica.outstanding -= 1

    def quarantine(self, group: Group, replica: Replica, code: str, detail: str) -> None:
        """Take a replica that failed a request out of rotation; the prober re-admits it when it is well."""
        with self._lock:
            was_ready = replica.state == "ready"
            if was_ready:
                replica.state = "quarantined"
        if was_ready:
            log_event(log, "replica_quarantined", logging.WARNING, address=replica.address, group=group.spec.name,
                      code=code, detail=detail)
            self._wake.set()

    # ---- verification and probing ---------------------------------------------------------------
    def _verify(self, group: Group, replica: Replica, patient: bool = True) -> None:
        """Admit a replica if it is healthy and serves this model's experts; else quarantine or refuse it.

        `patient`: wait up to connect_timeout_s for a server that is still starting (first contact);
        re-probes ask the health service first, which fails at once while nothing listens.
        """
        info, healthy, error = None, False, ""
        try:
            if patient or self.transport.serving(replica.address, min(1.0, self.connect_timeout_s)):
                info = self.transport.info(replica.address, self.connect_timeout_s)
                healthy = self.transport.serving(replica.address, self.connect_timeout_s)
                error = "" if healthy else "health check not SERVING"
            else:
                error = "health check failed"
        except grpc.RpcError as exc:
            error = exc.code().name if hasattr(exc, "code") else repr(exc)
        refused = None
        if info is not None:
            known = group.known_info()
            refused = refusal(info, fingerprint=self.fingerprint, group_experts=group.spec.expert_ids,
                              layers=self.layers, group_dtype=None if known is None else known.dtype)
        with self._lock:
            before = replica.state
            if refused:
                replica.state, replica.info = "refused", None
            elif healthy:
                replica.state, replica.info = "ready", info
            else:
                replica.state = "quarantined"
        if replica.state != before and replica.state == "refused":
            self.failures.labels(refused[0]).inc()
            log_event(log, "replica_refused", logging.ERROR, address=replica.address, group=group.spec.name,
                      reason=refused[0], detail=refused[1])
        elif replica.state != before:
            log_event(log, f"replica_{replica.state}", logging.INFO if healthy else logging.WARNING,
                      address=replica.address, group=group.spec.name, error=error)

    def _probe_loop(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.probe_interval_s)
            self._wake.clear()
            with self._lock:
                suspects = [(g, r) for g in self._groups for r in g.replicas if r.state != "ready"]
                idle = [r for r in self._retired if r.outstanding == 0]
                self._retired = [r for r in self._retired if r.outstanding > 0]
            for group, replica in suspects:
                if not self._closed.is_set():
                    self._verify(group, replica, patient=False)
            for replica in idle:
                if replica.address not in self.states():
                    self.transport.close(replica.address)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._prober.join()
