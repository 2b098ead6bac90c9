"""Server side of the shared-memory data path: a unix socket whose clients hand us their slot memory.

Each gateway connects once (the endpoint is in ServerInfo.shm_endpoint: an abstract unix socket, so only
processes in the same network namespace on the same host reach it), sends a hello with its memfd and the
server's secret token, then rings for each Combine. Abstract socket names are listed in /proc/net/unix,
so the name alone admits nobody: the token is in ServerInfo only, which a caller reads over gRPC, that is
over mutual TLS when the server has certificates. A hello without the right token is refused
(PERMISSION_DENIED) before its memory is mapped. The slot memory is a memfd: it has no path, and only
processes it is passed to (SCM_RIGHTS) or that may ptrace the gateway can map it. Requests of all links go to the same CombineBatcher as gRPC requests, so they
batch together; validation, admission (max_inflight) and metrics are the servicer's. Everything runs on
threads that sleep in recv() until a doorbell rings: nothing polls.
"""

from __future__ import annotations

import hmac
import logging
import mmap
import os
import secrets
import socket
import threading
import uuid

import grpc

from eaas.expert_service.combine_request import MAX_TOP_K, CombineJob, ServedExperts, check_routing
from eaas.logs import log_event
from eaas.rpc.slot_wire import (HELLO, HELLO_ANSWER, MAGIC, REPLY, REQUEST, TOKEN_BYTES, SlotRequest, itemsize,
                                request_tensors, response_view, socket_address)
from eaas.rpc.wire import FLOAT_DTYPES, WireError

log = logging.getLogger("eaas.expert_service")

MAX_LINK_BYTES = 4 << 30  # a gateway's slot memory we agree to map


def new_endpoint() -> str:
    """A fresh abstract-socket name; '@' stands for the leading NUL byte."""
    return f"@eaas-expert-{os.getpid()}-{uuid.uuid4().hex[:12]}"


class SlotServer:
    """Accepts slot links on `endpoint` and serves their Combine requests with `servicer`'s batcher.

    One thread per link blocks in recv() for the next doorbell. When the experts are idle it computes the
    request itself, writes the output into the slot and rings back: the request crosses no thread. When they
    are busy the request queues in the batcher, whose compute thread answers it the same way.
    """

    def __init__(self, servicer, endpoint: str | None = None):
        self.servicer = servicer
        self.endpoint = endpoint or new_endpoint()
        self.token = secrets.token_bytes(TOKEN_BYTES)  # handed out in ServerInfo.shm_token
        self._listener: socket.socket | None = None
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False

    async def start(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_address(self.endpoint))
        self._listener.listen(64)
        threading.Thread(target=self._accept_loop, name="slot-accept", daemon=True).start()

    async def close(self) -> None:
        """Stop accepting; drop every link (its gateway sees EOF and re-sends elsewhere)."""
        with self._lock:
            self._closed = True
            links = list(self._links)
        for sock in [self._listener, *links]:
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                self._links.add(conn)
            threading.Thread(target=self._serve_link, args=(conn,), name="slot-link", daemon=True).start()

    def _serve_link(self, conn: socket.socket) -> None:
        try:
            memory, slots, slot_bytes = _accept_hello(conn, self.token)
            conn.settimeout(None)
            send_lock = threading.Lock()

            def reply(req: SlotRequest, code: grpc.StatusCode, detail: str = "", tokens: int = 0) -> None:
                text = detail.encode()[:4096]
                with send_lock:
                    try:
                        conn.sendall(REPLY.pack(req.slot, req.generation, code.value[0], tokens, len(text)) + text)
                    except OSError:
                        pass  # the gateway went away; it re-sent this request elsewhere
            while True:
                head = _recv_exact(conn, REQUEST.size)
                if head is None:
                    return
                self._serve_request(SlotRequest.unpack(head), memory, slots, slot_bytes, reply)
        except (OSError, WireError) as exc:
            log_event(log, "slot_link_closed", logging.INFO, error=repr(exc))
        finally:
            with self._lock:
                self._links.discard(conn)
            conn.close()
            # the mapping stays referenced by in-flight requests' tensors until they finish; mmap frees it then

    def _serve_request(self, req: SlotRequest, memory, slots: int, slot_bytes: int, reply) -> None:
        svc = self.servicer
        if svc.draining:
            svc.metrics.requests.labels("UNAVAILABLE").inc()
            return reply(req, grpc.StatusCode.UNAVAILABLE, "server is draining (SIGTERM); retry another replica")
        try:
            check_request(req, svc.served, slots, slot_bytes)
            hidden, ids, weights = request_tensors(memory, req, slot_bytes)
            check_routing(ids, weights, svc.served)
        except WireError as exc:
            svc.metrics.requests.labels("INVALID_ARGUMENT").inc()
            log_event(log, "bad_request", logging.WARNING, transport="shm", error=exc)
            return reply(req, grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        refusal = svc.admit()
        if refusal:
            return reply(req, grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)

        def done(out, error) -> None:  # on the thread that computed (this link's or the batcher's)
            try:
                if error is None:
                    response_view(memory, req.slot, slot_bytes, req.tokens, req.hidden_size,
                                  svc.served.dtype).copy_(out)
                    svc.metrics.requests.labels("OK").inc()
                    reply(req, grpc.StatusCode.OK, tokens=req.tokens)
                else:  # a compute failure: report it, keep serving
                    svc.metrics.requests.labels("INTERNAL").inc()
                    log_event(log, "combine_failed", logging.ERROR, layer=req.layer, tokens=req.tokens,
                              error=repr(error))
                    reply(req, grpc.StatusCode.INTERNAL, f"combine failed: {error!r}")
            finally:
                svc.release()
        try:
            svc.batcher.submit_with_callback(CombineJob(req.layer, hidden, ids, weights), done)
        except RuntimeError as exc:  # batcher closed: draining
            svc.release()
            reply(req, grpc.StatusCode.UNAVAILABLE, str(exc))


def check_request(req: SlotRequest, served: ServedExperts, slots: int, slot_bytes: int) -> None:
    """Raise WireError for a request the server cannot serve (the same rules as the gRPC path)."""
    if req.slot >= slots:
        raise WireError(f"slot {req.slot} does not exist (this link has {slots})")
    if req.layer not in served.layers:
        raise WireError(f"layer {req.layer} is not served here; layers: {sorted(served.layers)}")
    if req.hidden_dtype != served.dtype:
        raise WireError(f"hidden: dtype {req.hidden_dtype!r} not allowed here; expected one of {served.dtype}")
    if req.hidden_size != served.hidden_size:
        raise WireError(f"hidden: shape [{req.tokens}, {req.hidden_size}] is not [T, {served.hidden_size}]")
    if not 1 <= req.top_k <= MAX_TOP_K:
        raise WireError(f"expert_ids: shape [{req.tokens}, {req.top_k}] is not [{req.tokens}, k] "
                        f"with 1 <= k <= {MAX_TOP_K}")
    if req.weights_dtype not in FLOAT_DTYPES:
        raise WireError(f"weights: dtype {req.weights_dtype!r} not allowed here")
    need = max(req.offsets()[3], req.tokens * req.hidden_size * itemsize(served.dtype))
    if need > slot_bytes:
        raise WireError(f"request of {need} bytes exceeds the slot's {slot_bytes} bytes")



class NotAdmitted(WireError):
    """A hello without the server's token: someone who did not learn it from Info."""


def _accept_hello(conn: socket.socket, token: bytes):
    """Read the hello and its memfd (blocking, off the loop); answer; return (mmap, slots, slot_bytes)."""
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, HELLO.size, 1)
    try:
        if len(data) != HELLO.size or len(fds) != 1:
            raise WireError("hello without slot memory")
        magic, slots, slot_bytes, offered = HELLO.unpack(data)
        if not hmac.compare_digest(offered, token):
            raise NotAdmitted("slot link refused: wrong shm token")
        size = 2 * slots * slot_bytes
        if magic != MAGIC or not 0 < size <= MAX_LINK_BYTES:
            raise WireError(f"bad hello: magic {magic!r}, {slots} slots of {slot_bytes} bytes")
        if os.fstat(fds[0]).st_size < size:
            raise WireError("slot memory smaller than announced")
        memory = mmap.mmap(fds[0], size)
    except (WireError, OSError) as exc:
        code = grpc.StatusCode.PERMISSION_DENIED if isinstance(exc, NotAdmitted) else grpc.StatusCode.INVALID_ARGUMENT
        conn.sendall(HELLO_ANSWER.pack(MAGIC, code.value[0]))
        raise
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(HELLO_ANSWER.pack(MAGIC, 0))
    return memory, slots, slot_bytes


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    """n bytes, or None at a clean EOF before the first byte."""
    chunks, got = [], 0
    while got < n:
        chunk = conn.recv(n - got)
        if not chunk:
            if got:
                raise OSError("link closed mid-frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
