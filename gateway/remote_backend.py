"""RemoteExpertBackend: the ExpertBackend that computes each MoE layer's experts on expert servers.

Per `combine` call: one Combine RPC per expert group that any token routes to, carrying only the tokens
routed to that group (slots of other groups masked to -1), all groups in flight at once; the partial
outputs are added in group order (groups sorted by expert id, the order the local combine adds them).
Replica choice is least-outstanding (gateway/dispatch.py). A failed attempt is re-sent, same payload, to
another replica of the group; the failed replica is quarantined and a background thread re-admits it once
its health check and Info pass again. Servers are stateless, so which replica answers changes no bit.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
import grpc
import torch
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from eaas.logs import log_event
from eaas.rpc.metrics import SECONDS_BUCKETS, PerExpertTokenCounter
from eaas.rpc.transport import ExpertTransport, GrpcTransport
from eaas.rpc.wire import DTYPE_BY_NAME, WireError, decode_tensor, encode_tensor
from eaas.gateway.dispatch import FailureAction, failure_action, pick_replica
from eaas.protos import expert_pb2
from eaas.topology import format_expert_ids

log = logging.getLogger("eaas.gateway.remote_backend")


_NO_GROUP, _NO_EXPERT = -2, -1  # owner-table entries for unknown expert ids and for slot id -1


def _owner_table(specs: list[GroupSpec]) -> torch.Tensor:
    """Group index of each expert id, looked up at clamp(id, -2, max_id + 1) + 2; -1 -> _NO_EXPERT."""
    top = max(e for s in specs for e in s.expert_ids)
    table = torch.full((top + 4,), _NO_GROUP, dtype=torch.long)
    table[1] = _NO_EXPERT
    for gi, spec in enumerate(specs):
        ids = [e + 2 for e in spec.expert_ids]
        overlap = [e - 2 for e in ids if table[e] != _NO_GROUP]
        if overlap:
            raise ValueError(f"experts {format_expert_ids(overlap)} are in more than one group")
        table[ids] = gi
    return table


class ExpertsUnavailable(RuntimeError):
    """No replica could compute some experts of a layer (gRPC-style UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE

    def __init__(self, layer: int, expert_ids: Iterable[int], detail: str):
        self.layer = layer
        self.expert_ids = sorted(expert_ids)
        super().__init__(f"UNAVAILABLE: layer {layer}, experts {format_expert_ids(self.expert_ids)}: {detail}")


class ExpertRequestRejected(RuntimeError):
    """A server refused the request itself (INVALID_ARGUMENT ...): every replica would, so no retry."""

    code = grpc.StatusCode.INVALID_ARGUMENT


@dataclass(frozen=True)
class GroupSpec:
    """One expert group: the expert ids it holds (in every MoE layer) and its replicas' addresses."""

    expert_ids: tuple[int, ...]
    addresses: tuple[str, ...]
    name: str = ""


class _Metrics:
    _by_registry: dict[int, _Metrics] = {}

    def __init__(self, registry: CollectorRegistry):
        self.rpc_seconds = Histogram("eaas_gateway_expert_rpc_seconds", "Round trip of one Combine RPC attempt.",
                                     buckets=SECONDS_BUCKETS, registry=registry)
        self.failures = Counter("eaas_gateway_expert_rpc_failures", "Failed Combine attempts and refused replicas.",
                                ["reason"], registry=registry)
        self.tokens_routed = PerExpertTokenCounter("eaas_gateway_tokens_routed",
                                                   "Token-expert pairs sent to expert servers, by expert id.", registry)

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> _Metrics:
        if id(registry) not in cls._by_registry:  # one set per registry: several backends may live in a process
            cls._by_registry[id(registry)] = cls(registry)
        return cls._by_registry[id(registry)]


@dataclass(eq=False)
class _Replica:
    address: str
    state: str = "unverified"  # unverified -> ready | quarantined | refused
    outstanding: int = 0
    info: expert_pb2.ServerInfo | None = None


@dataclass(eq=False)
class _Group:
    spec: GroupSpec
    replicas: list[_Replica]
    cursor: int = 0

    def known_info(self) -> expert_pb2.ServerInfo | None:
        return next((r.info for r in self.replicas if r.info is not None and r.state != "refused"), None)


@dataclass(eq=False)
class _Call:
    """One Combine request for one group; re-sent to other replicas until one answers."""

    group: _Group
    rows: torch.Tensor
    request: expert_pb2.CombineRequest
    tried: set[int] = field(default_factory=set)
    last_failure: str = "RESOURCE_EXHAUSTED"
    result: torch.Tensor | None = None
    future: object = None  # the attempt in flight


class RemoteExpertBackend:
    """ExpertBackend over expert servers. `groups`: GroupSpec or (expert_ids, [address, ...]) pairs."""

    def __init__(self, groups: Iterable, *, fingerprint: str, layers: Iterable[int] | None = None,
                 rpc_timeout_s: float = 10.0, call_timeout_s: float = 30.0, connect_timeout_s: float = 5.0,
                 probe_interval_s: float = 0.5, transport: ExpertTransport | None = None,
                 registry: CollectorRegistry = REGISTRY):
        self.fingerprint = fingerprint
        self.layers = None if layers is None else set(layers)
        self.rpc_timeout_s = rpc_timeout_s        # one attempt on one replica
        self.call_timeout_s = call_timeout_s      # everything one combine() may take, retries included
        self.connect_timeout_s = connect_timeout_s
        self.probe_interval_s = probe_interval_s
        self.transport = transport or GrpcTransport()
        self.metrics = _Metrics.for_registry(registry)
        self._lock = threading.Lock()             # replica states, outstanding counts, cursors
        self._groups: list[_Group] = []
        self._owner = torch.full((3,), _NO_GROUP, dtype=torch.long)  # see _owner_table
        self._retired: list[_Replica] = []
        self._closed = threading.Event()
        self._wake = threading.Event()
        self.update_table(groups)
        self._prober = threading.Thread(target=self._probe_loop, name="expert-replica-prober", daemon=True)
        self._prober.start()

    # ---- replica table ------------------------------------------------------------------------------
    def update_table(self, groups: Iterable) -> None:
        """Replace the replica table (discovery). Kept addresses keep their state; new ones are verified now."""
        specs = [g if isinstance(g, GroupSpec) else GroupSpec(tuple(sorted(g[0])), tuple(g[1])) for g in groups]
        if not specs or any(not s.expert_ids or not s.addresses for s in specs):
            raise ValueError("the replica table needs at least one group, each with expert ids and addresses")
        specs = sorted((GroupSpec(tuple(sorted(s.expert_ids)), tuple(s.addresses), s.name or f"g{i}")
                        for i, s in enumerate(specs)), key=lambda s: min(s.expert_ids))
        owner = _owner_table(specs)
        with self._lock:
            old = {(r.address, g.spec.expert_ids): r for g in self._groups for r in g.replicas}
            groups_new = [_Group(s, [old.pop((a, s.expert_ids), None) or _Replica(a) for a in s.addresses])
                          for s in specs]
            self._retired.extend(old.values())
        fresh = [(g, r) for g in groups_new for r in g.replicas if r.state == "unverified"]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(fresh)))) as pool:
            list(pool.map(lambda gr: self._verify(*gr), fresh))
        with self._lock:
            self._groups, self._owner = groups_new, owner

    def replica_states(self) -> dict[str, str]:
        """address -> ready | quarantined | refused | unverified, for status pages and tests."""
        with self._lock:
            return {r.address: r.state for g in self._groups for r in g.replicas}

    def _verify(self, group: _Group, replica: _Replica, patient: bool = True) -> None:
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
        refusal = self._refusal(group, info) if info is not None else None
        with self._lock:
            before = replica.state
            if refusal:
                replica.state, replica.info = "refused", None
            elif healthy:
                replica.state, replica.info = "ready", info
            else:
                replica.state = "quarantined"
        if replica.state != before and replica.state == "refused":
            self.metrics.failures.labels(refusal[0]).inc()
            log_event(log, "replica_refused", logging.ERROR, address=replica.address, group=group.spec.name,
                      reason=refusal[0], detail=refusal[1])
        elif replica.state != before:
            log_event(log, f"replica_{replica.state}", logging.INFO if healthy else logging.WARNING,
                      address=replica.address, group=group.spec.name, error=error)

    def _refusal(self, group: _Group, info: expert_pb2.ServerInfo) -> tuple[str, str] | None:
        if info.model_fingerprint != self.fingerprint:
            return ("fingerprint_mismatch", f"server model fingerprint {info.model_fingerprint} differs from the "
                                            f"gateway's {self.fingerprint}: not the same checkpoint")
        missing = set(group.spec.expert_ids) - set(info.expert_ids)
        if missing:
            return "config_mismatch", f"server does not hold experts {format_expert_ids(missing)} of its group"
        if self.layers is not None and not self.layers <= set(info.layers):
            return "config_mismatch", f"server lacks MoE layers {sorted(self.layers - set(info.layers))}"
        known = group.known_info()
        if known is not None and known.dtype != info.dtype:
            return "config_mismatch", f"server computes in {info.dtype}, its group in {known.dtype}"
        return None

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
                if replica.address not in self.replica_states():
                    self.transport.close(replica.address)

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        self._prober.join()
        self.transport.close()

    # ---- the data path ------------------------------------------------------------------------------
    def combine(self, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """hidden [T, D], expert_ids [T, k] (-1 = none), weights [T, k] -> [T, D], computed remotely."""
        with self._lock:
            groups, owner_of = self._groups, self._owner
        ids = expert_ids.detach().to("cpu", torch.int32)
        owner = owner_of[ids.clamp(-2, owner_of.numel() - 3).long() + 2]
        orphans = owner == _NO_GROUP
        if orphans.any():
            raise ExpertsUnavailable(layer, torch.unique(ids[orphans]).tolist(), "no expert group holds them")
        self.metrics.tokens_routed.add(ids)
        hidden_cpu, weights_cpu = hidden.detach().cpu(), weights.detach().cpu()
        calls = []
        for gi in torch.unique(owner).tolist():  # ascending: groups sorted by expert id
            if gi >= 0:
                in_group = owner == gi
                rows = in_group.any(dim=1).nonzero().squeeze(1)
                calls += self._requests(layer, groups[gi], rows, hidden_cpu[rows],
                                        torch.where(in_group, ids, -1)[rows], weights_cpu[rows])
        self._run(layer, calls)
        out = torch.zeros_like(hidden)
        for call in calls:
            out.index_add_(0, call.rows.to(out.device), call.result.to(out.device, out.dtype))
        return out

    def _requests(self, layer, group, rows, hidden, ids, weights) -> list[_Call]:
        """The group's Combine request(s): split so none exceeds the servers' message limit."""
        info = group.known_info()
        if info is None:
            with self._lock:
                states = ", ".join(f"{r.address}={r.state}" for r in group.replicas)
            raise ExpertsUnavailable(layer, group.spec.expert_ids,
                                     f"no replica of group {group.spec.name} was ever admitted ({states})")
        hidden = hidden.to(DTYPE_BY_NAME[info.dtype])
        row_bytes = hidden[:1].nbytes + ids[:1].nbytes + weights[:1].nbytes
        per_request = max(1, (info.max_message_bytes - 4096) // max(1, row_bytes))
        calls = []
        for start in range(0, rows.numel(), per_request):
            part = slice(start, start + per_request)
            request = expert_pb2.CombineRequest(layer=layer, hidden=encode_tensor(hidden[part]),
                                                expert_ids=encode_tensor(ids[part]),
                                                weights=encode_tensor(weights[part]))
            calls.append(_Call(group, rows[part], request))
        return calls

    def _run(self, layer: int, calls: list[_Call]) -> None:
        """Send every call, re-send failed ones elsewhere, until all have a result or the deadline passes."""
        try:
            self._run_until_answered(layer, calls)
        except BaseException:
            for call in calls:  # the layer failed: free the servers from work nobody will read
                if call.result is None and call.future is not None:
                    call.future.cancel()
            raise

    def _run_until_answered(self, layer: int, calls: list[_Call]) -> None:
        done: queue.SimpleQueue = queue.SimpleQueue()
        deadline = time.monotonic() + self.call_timeout_s
        for call in calls:
            self._send_or_raise(layer, call, done, deadline)
        waiting = len(calls)
        while waiting:
            try:
                call, replica, future = done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                late = sorted({e for c in calls if c.result is None for e in c.group.spec.expert_ids})
                raise ExpertsUnavailable(layer, late, f"no answer within {self.call_timeout_s}s") from None
            error = future.exception()
            if error is None:
                try:
                    call.result = self._decode(call, future.result())
                    waiting -= 1
                    continue
                except WireError as exc:
                    error, code, detail = exc, "INTERNAL", f"bad response: {exc}"
            else:
                code = error.code().name if hasattr(error, "code") else "UNKNOWN"
                detail = error.details() if hasattr(error, "details") else repr(error)
            self.metrics.failures.labels(code.lower()).inc()
            action = failure_action(code)
            if action is FailureAction.FAIL:
                raise ExpertRequestRejected(f"{code}: layer {layer}, {replica.address}: {detail}")
            if action is FailureAction.QUARANTINE_AND_RETRY:
                self._quarantine(call.group, replica, code, detail)
            call.last_failure = f"{code} from {replica.address}: {detail}"
            self._send_or_raise(layer, call, done, deadline, busy=action is FailureAction.RETRY_ELSEWHERE)

    def _send_or_raise(self, layer: int, call: _Call, done: queue.SimpleQueue, deadline: float, busy=False) -> None:
        while True:
            with self._lock:
                replica = self._pick(call)
                if replica is not None:
                    replica.outstanding += 1
            if replica is not None:
                break
            if not busy or time.monotonic() + 0.01 > deadline:
                raise ExpertsUnavailable(layer, call.group.spec.expert_ids, "every replica of group "
                                         f"{call.group.spec.name} failed or is quarantined; last: {call.last_failure}")
            time.sleep(0.01)  # all replicas busy: back off, then try them all again
            call.tried.clear()
        started = time.perf_counter()
        timeout = max(0.001, min(self.rpc_timeout_s, deadline - time.monotonic()))
        future = self.transport.combine(replica.address, call.request, timeout)

        def finished(f) -> None:  # runs on a grpc thread: only bookkeeping, the caller's thread decides
            with self._lock:
                replica.outstanding -= 1
            self.metrics.rpc_seconds.observe(time.perf_counter() - started)
            done.put((call, replica, f))

        call.future = future
        future.add_done_callback(finished)

    def _pick(self, call: _Call) -> _Replica | None:
        """Least-outstanding ready replica not yet tried; else, as a last resort, a quarantined one."""
        group, replicas = call.group, call.group.replicas
        loads = [r.outstanding for r in replicas]
        not_ready = {i for i, r in enumerate(replicas) if r.state != "ready"}
        index = pick_replica(loads, group.cursor, call.tried | not_ready)
        if index is None:  # a replica quarantined by one transient error may be fine: try it before giving up
            index = pick_replica(loads, group.cursor, call.tried | {
                i for i, r in enumerate(replicas) if r.state != "quarantined" or r.info is None})
        if index is None:
            return None
        call.tried.add(index)
        group.cursor = index + 1
        return replicas[index]

    def _quarantine(self, group: _Group, replica: _Replica, code: str, detail: str) -> None:
        with self._lock:
            was_ready = replica.state == "ready"
            if was_ready:
                replica.state = "quarantined"
        if was_ready:
            log_event(log, "replica_quarantined", logging.WARNING, address=replica.address, group=group.spec.name,
                      code=code, detail=detail)
            self._wake.set()

    @staticmethod
    def _decode(call: _Call, response: expert_pb2.CombineResponse) -> torch.Tensor:
        out = decode_tensor(response.output, "output", (call.request.hidden.dtype,))
        if list(out.shape) != list(call.request.hidden.shape):
            raise WireError(f"output shape {list(out.shape)} != request shape {list(call.request.hidden.shape)}")
        return out
