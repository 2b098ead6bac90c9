"""Server side of the shared-memory data path: a unix socket whose clients hand us their slot memory.

Each gateway connects once (the endpoint is in ServerInfo.shm_endpoint: an abstract unix socket, so only
processes in the same network namespace on the same host reach it), sends a hello with its memfd, then
rings for each Combine. Requests of all links go to the same CombineBatcher as gRPC requests, so they
batch together; validation, admission (max_inflight) and metrics are the servicer's. Everything runs on
the server's event loop: it sleeps in epoll until a doorbell rings, nothing polls.
"""

from __future__ import annotations

import asyncio
import logging
import mmap
import os
import socket
import uuid

import grpc

from eaas.expert_service.logs import log_event
from eaas.expert_service.slot_wire import (HELLO, HELLO_ANSWER, MAGIC, REPLY, REQUEST, SlotRequest, check_expert_ids,
                                           check_request, request_tensors, response_view)
from eaas.expert_service.wire import CombineJob, WireError

log = logging.getLogger("eaas.expert_service")

MAX_LINK_BYTES = 4 << 30  # a gateway's slot memory we agree to map


def new_endpoint() -> str:
    """A fresh abstract-socket name; '@' stands for the leading NUL byte."""
    return f"@eaas-expert-{os.getpid()}-{uuid.uuid4().hex[:12]}"


def socket_address(endpoint: str) -> str:
    return "\0" + endpoint[1:] if endpoint.startswith("@") else endpoint


class SlotServer:
    """Accepts slot links on `endpoint` and serves their Combine requests with `servicer`'s batcher."""

    def __init__(self, servicer, endpoint: str | None = None):
        self.servicer = servicer
        self.endpoint = endpoint or new_endpoint()
        self._listener: socket.socket | None = None
        self._tasks: set[asyncio.Task] = set()
        self._links: set[socket.socket] = set()

    async def start(self) -> None:
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(socket_address(self.endpoint))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self._spawn(self._accept_loop())

    def _spawn(self, coroutine) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        """Stop accepting; drop every link (its gateway sees EOF and re-sends elsewhere)."""
        if self._listener is not None:
            self._listener.close()
        for conn in list(self._links):
            conn.close()
        for task in list(self._tasks):
            task.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            self._spawn(self._serve_link(conn))

    async def _serve_link(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        self._links.add(conn)
        memory = None
        try:
            memory, slots, slot_bytes = await loop.run_in_executor(None, _accept_hello, conn)
            conn.setblocking(False)
            send_lock = asyncio.Lock()
            while True:
                head = await _recv_exact(loop, conn, REQUEST.size)
                if head is None:
                    return
                self._spawn(self._serve_request(conn, send_lock, memory, slots, slot_bytes, head))
        except (OSError, WireError) as exc:
            log_event(log, "slot_link_closed", logging.INFO, error=repr(exc))
        finally:
            self._links.discard(conn)
            conn.close()
            # the mapping stays referenced by in-flight requests' tensors until they finish; mmap frees it then

    async def _serve_request(self, conn, send_lock, memory, slots, slot_bytes, head: bytes) -> None:
        svc = self.servicer
        code, detail, tokens = grpc.StatusCode.OK, "", 0
        try:
            req = SlotRequest.unpack(head)
        except WireError as exc:  # the header itself is unreadable: nothing to answer to
            log_event(log, "bad_request", logging.WARNING, transport="shm", error=exc)
            conn.close()
            return
        try:
            check_request(req, svc.served, slots, slot_bytes)
            hidden, ids, weights = request_tensors(memory, req, slot_bytes)
            check_expert_ids(ids, svc.served)
        except WireError as exc:
            svc.metrics.requests.labels("INVALID_ARGUMENT").inc()
            log_event(log, "bad_request", logging.WARNING, transport="shm", error=exc)
            code, detail = grpc.StatusCode.INVALID_ARGUMENT, str(exc)
        if code is grpc.StatusCode.OK and svc.inflight >= svc.max_inflight:
            svc.metrics.requests.labels("RESOURCE_EXHAUSTED").inc()
            code = grpc.StatusCode.RESOURCE_EXHAUSTED
            detail = f"{svc.inflight} requests in flight (limit {svc.max_inflight}); retry elsewhere"
        if code is grpc.StatusCode.OK:
            svc.inflight += 1
            svc.metrics.inflight.inc()
            try:
                out = await svc.batcher.submit(CombineJob(req.layer, hidden, ids, weights))
                response_view(memory, req.slot, slot_bytes, req.tokens, req.hidden_size, svc.served.dtype).copy_(out)
                tokens = req.tokens
                svc.metrics.requests.labels("OK").inc()
            except Exception as exc:  # a compute failure: report it, keep serving
                svc.metrics.requests.labels("INTERNAL").inc()
                log_event(log, "combine_failed", logging.ERROR, layer=req.layer, tokens=req.tokens, error=repr(exc))
                code, detail = grpc.StatusCode.INTERNAL, f"combine failed: {exc!r}"
            finally:
                svc.inflight -= 1
                svc.metrics.inflight.dec()
        text = detail.encode()[:4096]
        async with send_lock:
            try:
                await asyncio.get_running_loop().sock_sendall(
                    conn, REPLY.pack(req.slot, req.generation, code.value[0], tokens, len(text)) + text)
            except OSError:
                pass  # the gateway went away; it re-sent this request elsewhere


def _accept_hello(conn: socket.socket):
    """Read the hello and its memfd (blocking, off the loop); answer; return (mmap, slots, slot_bytes)."""
    conn.settimeout(10)
    data, fds, _, _ = socket.recv_fds(conn, HELLO.size, 1)
    try:
        if len(data) != HELLO.size or len(fds) != 1:
            raise WireError("hello without slot memory")
        magic, slots, slot_bytes = HELLO.unpack(data)
        size = 2 * slots * slot_bytes
        if magic != MAGIC or not 0 < size <= MAX_LINK_BYTES:
            raise WireError(f"bad hello: magic {magic!r}, {slots} slots of {slot_bytes} bytes")
        if os.fstat(fds[0]).st_size < size:
            raise WireError("slot memory smaller than announced")
        memory = mmap.mmap(fds[0], size)
    except (WireError, OSError):
        conn.sendall(HELLO_ANSWER.pack(MAGIC, grpc.StatusCode.INVALID_ARGUMENT.value[0]))
        raise
    finally:
        for fd in fds:
            os.close(fd)
    conn.sendall(HELLO_ANSWER.pack(MAGIC, 0))
    return memory, slots, slot_bytes


async def _recv_exact(loop, conn: socket.socket, n: int) -> bytes | None:
    """n bytes, or None at a clean EOF before the first byte."""
    chunks, got = [], 0
    while got < n:
        chunk = await loop.sock_recv(conn, n - got)
        if not chunk:
            if got:
                raise OSError("link closed mid-frame")
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)
