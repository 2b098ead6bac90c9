"""Gateway side of the shared-memory data path: `SlotTransport`, an ExpertTransport beside GrpcTransport.

For every expert server whose Info names a shm endpoint that this process can reach (same host, same
network namespace), a `SlotLink` maps `slots` receive slots in one memfd, hands its fd to the server and
from then on a Combine is: copy the request's tensors (a CombinePayload: no protobuf on this path) into a
free slot, ring (a 40-byte header on the unix socket), and a reader thread blocked in recv() resolves the
call with a copy of the output tensor when the reply header arrives. gRPC stays
the control plane (Info, health) and the data path for servers without shm, for requests larger than a
slot and while every slot is busy. Failure semantics match gRPC's, so RemoteExpertBackend's failover is
unchanged: a dead server closes the socket (UNAVAILABLE for every call in flight on it), a silent one
misses the deadline (DEADLINE_EXCEEDED). A slot whose call was abandoned stays reserved until the server's
reply for that generation arrives, so the late answer can never be read as a later call's.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import mmap
import os
import socket
import threading
import time
from dataclasses import dataclass

import grpc
import torch

from eaas.logs import log_event
from eaas.protos import expert_pb2
from eaas.rpc.combine_payload import CombinePayload
from eaas.rpc.slot_wire import (HELLO, HELLO_ANSWER, MAGIC, REPLY, SlotRequest, request_tensors, response_view,
                                socket_address)
from eaas.rpc.transport import GrpcTransport
from eaas.rpc.wire import NAME_BY_DTYPE, WireError, encode_tensor
log = logging.getLogger("eaas.gateway.transport")

STATUS_BY_CODE = {c.value[0]: c for c in grpc.StatusCode}
SLOTS, SLOT_BYTES = 8, 4 << 20   # per server: 8 calls in flight of up to 4 MiB each (pages touched lazily)
DEADLINE_TICK_S = 0.05           # how often a link's reader looks for calls past their deadline
TRANSPORTS = ("auto", "shm", "grpc")


class TransportError(grpc.RpcError):
    """A failed call, shaped like a grpc.RpcError (code(), details()) so failover treats it the same."""

    def __init__(self, code: grpc.StatusCode, detail: str):
        super().__init__(f"{code.name}: {detail}")
        self._code, self._detail = code, detail

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._detail


def failed(code: grpc.StatusCode, detail: str) -> concurrent.futures.Future:
    future: concurrent.futures.Future = concurrent.futures.Future()
    future.set_exception(TransportError(code, detail))
    return future


@dataclass(eq=False)
class _Pending:
    generation: int
    future: concurrent.futures.Future
    deadline: float
    dtype: str
    shape: tuple[int, int]
    as_message: bool  # the caller sent a CombineRequest, not a CombinePayload: answer with a CombineResponse
    abandoned: bool = False  # timed out or link lost: the slot waits for the late reply before reuse


class SlotLink:
    """One gateway-server link: a memfd of slots, a unix socket, a reader thread."""

    def __init__(self, endpoint: str, token: bytes, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES,
                 timeout: float = 5.0):
        """token: the server's ServerInfo.shm_token (learnt over gRPC, i.e. over mTLS when TLS is on)."""
        self.endpoint, self.slots, self.slot_bytes = endpoint, slots, slot_bytes
        fd = os.memfd_create("eaas-slots", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, 2 * slots * slot_bytes)
            self.memory = mmap.mmap(fd, 2 * slots * slot_bytes)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(timeout)
            try:
                self.sock.connect(socket_address(endpoint))
                socket.send_fds(self.sock, [HELLO.pack(MAGIC, slots, slot_bytes, token)], [fd])
                answer = _recv_exact(self.sock, HELLO_ANSWER.size)
            except OSError:
                self.sock.close()
                raise
        finally:
            os.close(fd)
        magic, code = HELLO_ANSWER.unpack(answer)
        if magic != MAGIC or code:
            self.sock.close()
            raise ConnectionRefusedError(f"server refused the slot link ({STATUS_BY_CODE.get(code, code)})")
        self.sock.settimeout(DEADLINE_TICK_S)
        self._lock = threading.Lock()       # free slots, pending calls, the generation counter, sends
        self._free = list(range(slots))
        self._pending: dict[int, _Pending] = {}
        self._generations = itertools.count(1)
        self.alive = True
        self.stale_replies = 0
        self._reader = threading.Thread(target=self._read_replies, name="expert-slot-reader", daemon=True)
        self._reader.start()

    def combine(self, payload: CombinePayload, timeout: float, as_message: bool = False
                ) -> concurrent.futures.Future | None:
        """Start a Combine in a free slot; None if it does not fit a slot or every slot is busy.

        The future's result is the output tensor, or a CombineResponse with `as_message`."""
        hidden, ids, weights = payload.hidden, payload.expert_ids, payload.weights
        if hidden.dim() != 2 or ids.dim() != 2 or weights.shape != ids.shape or ids.dtype != torch.int32 \
                or hidden.dtype not in NAME_BY_DTYPE or weights.dtype not in NAME_BY_DTYPE:
            return None  # malformed: let the gRPC path report it as the server sees it
        tokens, width = hidden.shape
        header = SlotRequest(0, 0, payload.layer, tokens, width, ids.shape[1], NAME_BY_DTYPE[hidden.dtype],
                             NAME_BY_DTYPE[weights.dtype])
        if max(header.offsets()[3], hidden.nbytes) > self.slot_bytes:
            return None
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            if not self.alive or not self._free:
                return None
            slot, generation = self._free.pop(), next(self._generations)
            header = dataclasses.replace(header, slot=slot, generation=generation)
            for view, tensor in zip(request_tensors(self.memory, header, self.slot_bytes), (hidden, ids, weights)):
                view.copy_(tensor)
            self._pending[slot] = _Pending(generation, future, time.monotonic() + timeout, header.hidden_dtype,
                                           (tokens, width), as_message)
            try:
                self.sock.sendall(header.pack())
            except OSError as exc:
                self._lose_locked(f"send failed: {exc!r}")
        return future

    def close(self) -> None:
        with self._lock:
            self._lose_locked("link closed by the gateway")
        self._reader.join(timeout=2)

    # ---- reader thread --------------------------------------------------------------------------------
    def _read_replies(self) -> None:
        buffer = b""
        while self.alive:
            try:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionResetError("expert server closed the link")
                buffer += chunk
            except TimeoutError:
                pass
            except OSError as exc:
                with self._lock:
                    self._lose_locked(f"link to {self.endpoint} lost: {exc}")
                return
            while len(buffer) >= REPLY.size:
                slot, generation, code, tokens, detail_len = REPLY.unpack_from(buffer)
                if len(buffer) < REPLY.size + detail_len:
                    break
                detail = buffer[REPLY.size:REPLY.size + detail_len].decode(errors="replace")
                buffer = buffer[REPLY.size + detail_len:]
                self._answer(slot, generation, code, tokens, detail)
            self._expire(time.monotonic())

    def _answer(self, slot: int, generation: int, code: int, tokens: int, detail: str) -> None:
        with self._lock:
            call = self._pending.get(slot)
            if call is None or call.generation != generation:
                self.stale_replies += 1  # not the call now waiting on this slot: never read its data
                return
            del self._pending[slot]
            if call.abandoned:
                self._free.append(slot)
                return
        if code == 0:
            # a private copy: the slot is reused as soon as it is freed below
            out = response_view(self.memory, slot, self.slot_bytes, tokens, call.shape[1], call.dtype).clone()
            _resolve(call.future, result=expert_pb2.CombineResponse(output=encode_tensor(out))
                     if call.as_message else out)
        else:
            status = STATUS_BY_CODE.get(code, grpc.StatusCode.UNKNOWN)
            _resolve(call.future, error=TransportError(status, detail))
        with self._lock:
            self._free.append(slot)

    def _expire(self, now: float) -> None:
        late = []
        with self._lock:
            for call in self._pending.values():
                if not call.abandoned and (now > call.deadline or call.future.cancelled()):
                    call.abandoned = True
                    late.append(call)
        for call in late:
            _resolve(call.future, error=TransportError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"))

    def _lose_locked(self, why: str) -> None:
        """The link is gone: every call in flight fails UNAVAILABLE (caller holds the lock)."""
        if not self.alive:
            return
        self.alive = False
        calls, self._pending = list(self._pending.values()), {}
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for call in calls:
            _resolve(call.future, error=TransportError(grpc.StatusCode.UNAVAILABLE, why))


class SlotTransport:
    """ExpertTransport: shared-memory slots where the server offers them, gRPC otherwise.

    `required`: with --transport shm, a server that offers no reachable slots is refused (Info fails
    with FAILED_PRECONDITION); with auto it is served over gRPC.
    """

    sends_on_caller_thread = True  # a slot call is copied and rung on the caller's thread (see GrpcTransport)

    def __init__(self, required: bool = False, slots: int = SLOTS, slot_bytes: int = SLOT_BYTES,
                 grpc_transport: GrpcTransport | None = None):
        self.required, self.slots, self.slot_bytes = required, slots, slot_bytes
        self.grpc = grpc_transport or GrpcTransport()
        self._lock = threading.Lock()
        self._links: dict[str, SlotLink] = {}
        self._endpoints: dict[str, str] = {}

    def info(self, address, timeout):
        info = self.grpc.info(address, timeout)
        with self._lock:
            link = self._links.get(address)
            self._endpoints[address] = info.shm_endpoint
        if link is not None and link.alive and link.endpoint == info.shm_endpoint:
            return info
        if link is not None:
            link.close()
        try:
            link = (SlotLink(info.shm_endpoint, info.shm_token, self.slots, self.slot_bytes)
                    if info.shm_endpoint else None)
        except OSError as exc:
            link = None
            log_event(log, "slot_link_unavailable", logging.INFO, address=address, endpoint=info.shm_endpoint,
                      error=repr(exc), fallback="refused" if self.required else "grpc")
        if link is None and self.required:
            raise TransportError(grpc.StatusCode.FAILED_PRECONDITION,
                                 f"{address} offers no shared-memory slots reachable from here (--transport shm)")
        with self._lock:
            if link is None:
                self._links.pop(address, None)
            else:
                self._links[address] = link
        if link is not None:
            log_event(log, "slot_link_open", logging.INFO, address=address, endpoint=link.endpoint,
                      slots=link.slots, slot_bytes=link.slot_bytes)
        return info

    def serving(self, address, timeout):
        return self.grpc.serving(address, timeout)

    def uses_slots(self, address: str) -> bool:
        with self._lock:
            link = self._links.get(address)
        return link is not None and link.alive

    def combine(self, address, request, timeout):
        with self._lock:
            link, endpoint = self._links.get(address), self._endpoints.get(address, "")
        if link is None:
            if endpoint and self.required:
                return failed(grpc.StatusCode.UNAVAILABLE, f"no slot link to {address}")
            return self.grpc.combine(address, request, timeout)
        if not link.alive:  # the server died or restarted: the prober's next Info re-links
            return failed(grpc.StatusCode.UNAVAILABLE, f"slot link to {address} lost")
        if isinstance(request, CombinePayload):
            future = link.combine(request, timeout)
        else:  # a message (tests, tools): its tensors; a malformed one goes to gRPC, which reports the error
            try:
                future = link.combine(CombinePayload.from_request(request), timeout, as_message=True)
            except WireError:
                future = None
        return future if future is not None else self.grpc.combine(address, request, timeout)

    def close(self, address=None):
        with self._lock:
            links = [self._links.pop(a) for a in (list(self._links) if address is None else [address])
                     if a in self._links]
        for link in links:
            link.close()
        self.grpc.close(address)


def make_transport(name: str, tls=None, tls_server_name: str | None = None):
    """The ExpertTransport for --transport NAME (auto | shm | grpc); `tls` (TLSFiles): mutual TLS for gRPC,
    which is also how a slot link's token is learnt."""
    if name not in TRANSPORTS:
        raise ValueError(f"unknown transport {name!r}; choose one of {', '.join(TRANSPORTS)}")
    rpc = GrpcTransport(tls, tls_server_name)
    return rpc if name == "grpc" else SlotTransport(required=name == "shm", grpc_transport=rpc)


def _resolve(future: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    try:
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)
    except concurrent.futures.InvalidStateError:
        pass  # cancelled by the caller meanwhile


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionResetError("expert server closed the link during the hello")
        data += chunk
    return data
