"""RemoteExpertBackend: the ExpertBackend that computes each MoE layer's experts on expert servers.

Per `combine` call: one Combine RPC per expert group that any token routes to, carrying only the tokens
routed to that group (slots of other groups masked to -1), all groups in flight at once; the partial
outputs are added in group order (groups sorted by expert id, the order the local combine adds them).
Replica choice is least-outstanding (gateway/dispatch.py). A failed attempt is re-sent, same payload, to
another replica of the group; the failed replica is quarantined until the table's prober re-admits it
(gateway/replica_table.py). An attempt that has not answered within a few times its group's median round
trip is hedged: the same request also goes to another replica and the first answer wins (a killed
server is only noticed once the kernel has torn it down, a stalled one not at all before the deadline).
Servers are stateless, so which replica answers changes no bit.
"""

from __future__ import annotations

import queue
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import grpc
import torch
from prometheus_client import REGISTRY, CollectorRegistry

from eaas.engine.micro_batch_turns import pass_turn
from eaas.gateway.dispatch import (HEDGE_FACTOR, HEDGE_HISTORY, NO_GROUP, FailureAction, failure_action,
                                   hedge_delay, owners, rows_per_request, split_by_group)
from eaas.gateway.expert_rpc_metrics import ExpertRpcMetrics
from eaas.gateway.replica_table import Group, GroupSpec, Replica, ReplicaTable
from eaas.protos import expert_pb2
from eaas.rpc.transport import ExpertTransport, GrpcTransport
from eaas.rpc.combine_payload import CombinePayload
from eaas.rpc.wire import DTYPE_BY_NAME, NAME_BY_DTYPE, WireError, decode_tensor
from eaas.topology import format_expert_ids

BUSY_BACKOFF_S = 0.01  # every replica of a group answered RESOURCE_EXHAUSTED: wait this long, then retry them


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


@dataclass(eq=False)
class _Call:
    """One Combine request for one group; re-sent to other replicas until one answers."""

    group: Group
    rows: torch.Tensor
    payload: CombinePayload
    tried: set[int] = field(default_factory=set)
    last_failure: str = "RESOURCE_EXHAUSTED"
    result: torch.Tensor | None = None
    futures: list = field(default_factory=list)  # every attempt sent
    inflight: int = 0                              # attempts not answered yet
    hedge_at: float | None = None                  # monotonic time to hedge the attempt in flight, if any
    hedged: bool = False                           # at most one hedge per call


class RemoteExpertBackend:
    """ExpertBackend over expert servers. `groups`: GroupSpec or (expert_ids, [address, ...]) pairs."""

    def __init__(self, groups: Iterable, *, fingerprint: str, layers: Iterable[int] | None = None,
                 rpc_timeout_s: float = 10.0, call_timeout_s: float = 30.0, connect_timeout_s: float = 5.0,
                 probe_interval_s: float = 0.5, transport: ExpertTransport | None = None,
                 hedge_factor: float = HEDGE_FACTOR, registry: CollectorRegistry = REGISTRY):
        self.rpc_timeout_s = rpc_timeout_s        # one attempt on one replica
        self.call_timeout_s = call_timeout_s      # everything one combine() may take, retries included
        self.hedge_factor = hedge_factor          # 0: never hedge (dispatch.hedge_delay)
        self._round_trips: defaultdict[tuple, deque] = defaultdict(lambda: deque(maxlen=4 * HEDGE_HISTORY))
        self.transport = transport or GrpcTransport()
        self.metrics = ExpertRpcMetrics.for_registry(registry)
        self.table = ReplicaTable(groups, fingerprint=fingerprint, layers=layers, transport=self.transport,
                                  failures=self.metrics.failures, connect_timeout_s=connect_timeout_s,
                                  probe_interval_s=probe_interval_s)
        self.metrics.replicas.watch(self.table)

    def update_table(self, groups: Iterable) -> None:
        """Replace the replica table (discovery). Kept addresses keep their state; new ones are verified now."""
        self.table.update(groups)

    def replica_states(self) -> dict[str, str]:
        return self.table.states()

    def groups(self) -> list[GroupSpec]:
        """The groups the backend routes to now."""
        return self.table.specs()

    def close(self) -> None:
        self.metrics.replicas.forget(self.table)
        self.table.close()
        self.transport.close()

    # ---- the data path ------------------------------------------------------------------------------
    def combine(self, layer: int, hidden: torch.Tensor, expert_ids: torch.Tensor,
                weights: torch.Tensor) -> torch.Tensor:
        """hidden [T, D], expert_ids [T, k] (-1 = none), weights [T, k] -> [T, D], computed remotely."""
        groups, table = self.table.snapshot()
        ids = expert_ids.detach().to("cpu", torch.int32)
        owner = owners(table, ids)
        orphans = owner == NO_GROUP
        if orphans.any():
            raise ExpertsUnavailable(layer, torch.unique(ids[orphans]).tolist(), "no expert group holds them")
        hidden_cpu, weights_cpu = hidden.detach().cpu(), weights.detach().cpu()
        calls = []
        for part in split_by_group(owner, ids):
            # index_select / index_put_, not x[rows] / index_add_: with 2 OpenMP threads on a loaded host those
            # took 0.2 / 1.3-1.5 ms on a 64 x 256 batch against 3 / 6 us (benchmarks/dispatch_overhead.py)
            calls += self._requests(layer, groups[part.group], part.rows, hidden_cpu.index_select(0, part.rows),
                                    part.expert_ids, weights_cpu.index_select(0, part.rows))
        zeros: list[torch.Tensor] = []

        def meanwhile() -> None:  # what the answers are not waiting for: done while the servers compute
            self.metrics.tokens_routed.add(ids)
            zeros.append(torch.zeros_like(hidden))
        self._run(layer, calls, meanwhile)
        out = zeros[0]
        for call in calls:
            out.index_put_((call.rows.to(out.device),), call.result.to(out.device, out.dtype), accumulate=True)
        return out

    def _requests(self, layer, group: Group, rows, hidden, ids, weights) -> list[_Call]:
        """The group's Combine request(s): split so none exceeds the servers' message limit."""
        info = group.known_info()
        if info is None:
            raise ExpertsUnavailable(layer, group.spec.expert_ids, f"no replica of group {group.spec.name} "
                                     f"was ever admitted ({self.table.describe(group)})")
        hidden = hidden.to(DTYPE_BY_NAME[info.dtype])
        per_request = rows_per_request(info.max_message_bytes, (hidden.shape[1] * hidden.itemsize + ids.shape[1]
                                                                * (ids.itemsize + weights.itemsize)))
        if rows.numel() <= per_request:  # the usual case: one request, no slicing
            return [_Call(group, rows, CombinePayload(layer, hidden, ids, weights))]
        return [_Call(group, rows[start:start + per_request],
                      CombinePayload(layer, *(t[start:start + per_request].contiguous() for t in (hidden, ids, weights))))
                for start in range(0, rows.numel(), per_request)]

    def _run(self, layer: int, calls: list[_Call], meanwhile: Callable[[], None]) -> None:
        """Send every call, run `meanwhile`, re-send failed calls elsewhere, until all have a result or the
        deadline passes."""
        try:
            self._run_until_answered(layer, calls, meanwhile)
        except BaseException:
            for call in calls:  # the layer failed: free the servers from work nobody will read
                if call.result is None:
                    for future in call.futures:
                        future.cancel()
            raise

    def _run_until_answered(self, layer: int, calls: list[_Call], meanwhile: Callable[[], None]) -> None:
        done: queue.SimpleQueue = queue.SimpleQueue()
        deadline = time.monotonic() + self.call_timeout_s
        # measured on gRPC: bookkeeping run between or right after the sends held the GIL that the transport's
        # loop thread needed to send them (+3-7% CPU per token); on slots the sends are done when they return
        inline = getattr(self.transport, "sends_on_caller_thread", True)
        if not inline:
            meanwhile()
        for call in calls:
            self._send_or_raise(layer, call, done, deadline)
        if inline:
            meanwhile()
        pass_turn()  # another micro-batch computes its attention while the servers compute this one's experts
        waiting = len(calls)
        while waiting:
            wake = min([c.hedge_at for c in calls if c.result is None and c.hedge_at is not None] + [deadline])
            try:
                call, replica, future = done.get(timeout=max(0.0, wake - time.monotonic()))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    late = sorted({e for c in calls if c.result is None for e in c.group.spec.expert_ids})
                    raise ExpertsUnavailable(layer, late, f"no answer within {self.call_timeout_s}s") from None
                self._hedge_late(calls, done, deadline)
                continue
            call.inflight -= 1
            error = None if future.cancelled() else future.exception()
            if call.result is not None:  # the other attempt of a hedged call answered first: this one is not read,
                self._quarantine_loser(call, replica, error)  # but a dead replica must still leave the rotation
                continue
            if error is None:
                try:
                    call.result = self._decode(call, future.result())
                    waiting -= 1
                    continue
                except WireError as exc:
                    error, code, detail = exc, "INTERNAL", f"bad response: {exc}"
                    self.metrics.failures.labels(code.lower()).inc()
            else:
                code, detail = _status(error)  # counted in finished(), where every failed attempt is
            action = failure_action(code)
            if action is FailureAction.FAIL:
                raise ExpertRequestRejected(f"{code}: layer {layer}, {replica.address}: {detail}")
            if action is FailureAction.QUARANTINE_AND_RETRY:
                self.table.quarantine(call.group, replica, code, detail)
            call.last_failure = f"{code} from {replica.address}: {detail}"
            if call.inflight:
                continue  # its hedge is still running: that one may answer
            self._send_or_raise(layer, call, done, deadline, busy=action is FailureAction.RETRY_ELSEWHERE)

    def _hedge_late(self, calls: list[_Call], done: queue.SimpleQueue, deadline: float) -> None:
        """Send every call whose attempt outlived its hedge delay to one more replica too (if one is left)."""
        now = time.monotonic()
        for call in calls:
            if call.result is None and call.hedge_at is not None and call.hedge_at <= now:
                call.hedge_at = None
                replica = self.table.acquire(call.group, call.tried)
                if replica is not None:
                    call.hedged = True
                    self.metrics.hedges.inc()
                    self._attempt(call, replica, done, deadline)

    def _send_or_raise(self, layer: int, call: _Call, done: queue.SimpleQueue, deadline: float, busy=False) -> None:
        while (replica := self.table.acquire(call.group, call.tried)) is None:
            if not busy or time.monotonic() + BUSY_BACKOFF_S > deadline:
                raise ExpertsUnavailable(layer, call.group.spec.expert_ids, "every replica of group "
                                         f"{call.group.spec.name} failed or is quarantined; last: {call.last_failure}")
            time.sleep(BUSY_BACKOFF_S)  # all replicas busy: back off, then try them all again
            call.tried.clear()
        self._attempt(call, replica, done, deadline)

    def _attempt(self, call: _Call, replica: Replica, done: queue.SimpleQueue, deadline: float) -> None:
        started = time.perf_counter()
        timeout = max(0.001, min(self.rpc_timeout_s, deadline - time.monotonic()))
        round_trips = self._round_trips[call.group.spec.expert_ids]
        future = self.transport.combine(replica.address, call.payload, timeout)

        def finished(f, replica: Replica = replica) -> None:  # on a transport thread: bookkeeping only
            self.table.release(replica)
            seconds = time.perf_counter() - started
            self.metrics.rpc_seconds.observe(seconds)
            error = None if f.cancelled() else f.exception()
            if not f.cancelled() and error is None:
                round_trips.append(seconds)  # deque.append: atomic, no lock needed
            elif error is not None:
                self.metrics.failures.labels(_status(error)[0].lower()).inc()  # also when a hedge already answered
                if call.result is not None:  # the layer may be over: nobody else reads this failure
                    self._quarantine_loser(call, replica, error)
            done.put((call, replica, f))

        call.futures.append(future)
        call.inflight += 1
        delay = None if call.hedged else hedge_delay(list(round_trips), self.hedge_factor)
        call.hedge_at = None if delay is None else time.monotonic() + delay
        future.add_done_callback(finished)

    def _quarantine_loser(self, call: _Call, replica: Replica, error: BaseException | None) -> None:
        """Quarantine the replica of a hedged attempt that failed after the call had its answer (idempotent)."""
        if error is not None:
            code, detail = _status(error)
            if failure_action(code) is FailureAction.QUARANTINE_AND_RETRY:
                self.table.quarantine(call.group, replica, code, detail)

    @staticmethod
    def _decode(call: _Call, response: expert_pb2.CombineResponse | torch.Tensor) -> torch.Tensor:
        """The output of an answered call: a tensor from the slots, a message from gRPC."""
        hidden = call.payload.hidden
        out = response if isinstance(response, torch.Tensor) else \
            decode_tensor(response.output, "output", (NAME_BY_DTYPE[hidden.dtype],))
        if out.shape != hidden.shape or out.dtype != hidden.dtype:
            raise WireError(f"output {list(out.shape)} {out.dtype} != request {list(hidden.shape)} {hidden.dtype}")
        return out


def _status(error: BaseException) -> tuple[str, str]:
    """(gRPC status name, detail) of a failed attempt (RpcError-shaped, or anything else as UNKNOWN)."""
    code = error.code().name if hasattr(error, "code") else "UNKNOWN"
    return code, error.details() if hasattr(error, "details") else repr(error)
