"""The expert server: gRPC `ExpertService` (Combine, Info) + health + reflection over one set of experts.

Stateless: a request carries everything needed, so any replica of a group gives the same answer.
Admission control: at most `max_inflight` Combine requests are admitted (queued or computing); more are
answered RESOURCE_EXHAUSTED at once, so a burst never grows memory without bound (each request is also
capped at MAX_MESSAGE_BYTES). SIGTERM: health goes NOT_SERVING, new RPCs are refused, admitted ones finish
and their replies are handed to the socket before gRPC's shutdown (GOAWAY) starts; see `serve`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass

import grpc
import torch
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from eaas.expert_service.batcher import CombineBatcher
from eaas.expert_service.combine_request import ServedExperts, decode_combine
from eaas.expert_service.metrics import ExpertServerMetrics
from eaas.expert_service.slot_server import SlotServer
from eaas.logs import log_event
from eaas.model.experts import ExpertWeights
from eaas.protos import expert_pb2, expert_pb2_grpc
from eaas.rpc.transport import SERVICE_NAME
from eaas.rpc.wire import MAX_MESSAGE_BYTES, NAME_BY_DTYPE, TRANSPORT_MESSAGE_BYTES, WireError, encode_tensor
from eaas.tls import TLSFiles
from eaas.tls_credentials import grpc_server_credentials
from eaas.topology import format_expert_ids

log = logging.getLogger("eaas.expert_service")

DRAIN_GRACE_SECONDS = 30.0          # how long admitted requests may take to finish after SIGTERM


@dataclass
class ServerConfig:
    host: str
    port: int
    group: str
    deployment: str
    max_inflight: int
    model_fingerprint: str
    model_type: str
    offer_shm: bool = True  # also serve the shared-memory data path (expert_service/slot_server.py)
    tls: TLSFiles | None = None  # mutual TLS: serve with its certificate, require clients signed by its CA


def move_experts(experts: ExpertWeights, device: torch.device) -> None:
    for lx in experts.layers.values():
        lx.gate_up, lx.down, lx.slot_of = lx.gate_up.to(device), lx.down.to(device), lx.slot_of.to(device)


class ExpertServicer(expert_pb2_grpc.ExpertServiceServicer):
    def __init__(self, served: ServedExperts, info: expert_pb2.ServerInfo, batcher: CombineBatcher,
                 metrics: ExpertServerMetrics, max_inflight: int):
        self.served = served
        self.info = info
        self.batcher = batcher
        self.metrics = metrics
        self.max_inflight = max_inflight
        self.inflight = 0  # gRPC calls on the event loop and slot links' threads: changed under _admission
        self._admission = threading.Lock()
        self.draining = False
        self._replies: set[asyncio.Future] = set()  # admitted calls whose reply batch has not completed

    def admit(self) -> str | None:
        """Count one more request in flight; or say why not (the RESOURCE_EXHAUSTED detail)."""
        with self._admission:
            if self.inflight >= self.max_inflight:
                self.metrics.requests.labels("RESOURCE_EXHAUSTED").inc()
                return f"{self.inflight} requests in flight (limit {self.max_inflight}); retry elsewhere"
            self.inflight += 1
        self.metrics.inflight.inc()
        return None

    def release(self) -> None:
        with self._admission:
            self.inflight -= 1
        self.metrics.inflight.dec()

    async def Combine(self, request, context):
        if self.draining:
            self.metrics.requests.labels("UNAVAILABLE").inc()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "server is draining (SIGTERM); retry another replica")
        try:
            job = decode_combine(request, self.served)
        except WireError as exc:
            self.metrics.requests.labels("INVALID_ARGUMENT").inc()
            log_event(log, "bad_request", logging.WARNING, layer=request.layer, peer=context.peer(), error=exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        refusal = self.admit()
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
        self._track_reply(context)
        try:
            out = await self.batcher.submit(job)
        except Exception as exc:  # a compute failure: report it, keep serving
            self.metrics.requests.labels("INTERNAL").inc()
            log_event(log, "combine_failed", logging.ERROR, layer=job.layer, tokens=job.tokens, error=repr(exc))
            await context.abort(grpc.StatusCode.INTERNAL, f"combine failed: {exc!r}")
        finally:
            self.release()
        self.metrics.requests.labels("OK").inc()
        return expert_pb2.CombineResponse(output=encode_tensor(out))

    async def Info(self, request, context):
        return self.info

    def _track_reply(self, context) -> None:
        """Resolve a future once the call ends: its reply batch completed (gRPC core wrote every byte)."""
        sent = asyncio.get_running_loop().create_future()
        self._replies.add(sent)

        def ended(_context) -> None:  # runs on the event loop when the RPC terminates
            self._replies.discard(sent)
            if not sent.done():
                sent.set_result(None)

        context.add_done_callback(ended)

    @property
    def unsent(self) -> int:
        """Admitted calls whose reply batch has not completed."""
        return len(self._replies)

    async def drain(self, timeout: float) -> None:
        """Refuse new Combine calls (UNAVAILABLE: the gateway retries another replica); wait up to `timeout`
        until every admitted call's reply batch completed."""
        self.draining = True
        if self._replies:
            await asyncio.wait(set(self._replies), timeout=timeout)


def build_servicer(experts: ExpertWeights, config: ServerConfig, device: torch.device,
                   metrics: ExpertServerMetrics) -> ExpertServicer:
    layers = sorted(experts.layers)
    expert_ids = experts.layers[layers[0]].expert_ids
    dtype = NAME_BY_DTYPE[experts.dtype]
    served = ServedExperts(frozenset(layers), frozenset(expert_ids), experts.num_experts, experts.hidden_size,
                           dtype, MAX_MESSAGE_BYTES)
    info = expert_pb2.ServerInfo(
        model_fingerprint=config.model_fingerprint, model_type=config.model_type, layers=layers,
        expert_ids=expert_ids, dtype=dtype, hidden_size=experts.hidden_size, num_experts=experts.num_experts,
        group=config.group, deployment=config.deployment, device=str(device), max_inflight=config.max_inflight,
        max_message_bytes=MAX_MESSAGE_BYTES)
    batcher = CombineBatcher(experts, device, metrics.observe_batch)
    return ExpertServicer(served, info, batcher, metrics, config.max_inflight)


async def serve(servicer: ExpertServicer, config: ServerConfig, on_ready=None, on_drain=None) -> None:
    """Serve until SIGTERM/SIGINT, then drain. Coroutine callbacks: `on_ready(bound_port)` once the port is
    open, `on_drain()` when draining starts (deregister before refusing requests)."""
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", TRANSPORT_MESSAGE_BYTES),
                                      ("grpc.max_send_message_length", TRANSPORT_MESSAGE_BYTES),
                                      ("grpc.so_reuseport", 0)])
    expert_pb2_grpc.add_ExpertServiceServicer_to_server(servicer, server)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        [SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME], server)
    try:
        address = f"{config.host}:{config.port}"
        bound = (server.add_insecure_port(address) if config.tls is None else
                 server.add_secure_port(address, grpc_server_credentials(config.tls, require_client_cert=True)))
    except RuntimeError:  # grpc raises RuntimeError when the address cannot be bound
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {config.host}:{config.port}")
    await server.start()
    slots = None
    if config.offer_shm:
        slots = SlotServer(servicer)
        await slots.start()
        servicer.info.shm_endpoint = slots.endpoint
        servicer.info.shm_token = slots.token
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log_event(log, "serving", address=f"{config.host}:{bound}", group=config.group,
              tls="mutual" if config.tls is not None else "off",
              experts=format_expert_ids(servicer.info.expert_ids), layers=len(servicer.info.layers),
              dtype=servicer.info.dtype, device=servicer.info.device, max_inflight=config.max_inflight)
    if on_ready is not None:
        await on_ready(bound)
    await stop.wait()
    log_event(log, "draining", inflight=servicer.inflight)
    if on_drain is not None:
        await on_drain()
    await health.enter_graceful_shutdown()
    # Replies first, GOAWAY second. server.stop sends GOAWAY at once, and gRPC core closes a connection as
    # soon as its last stream's bytes are handed to the kernel; a client still reading a large reply then
    # sends a frame to a closed socket, the kernel answers RST and the unsent tail is lost (UNAVAILABLE
    # "GOAWAY ... Server shutdown"). Once every reply is in the socket, GOAWAY and its PING queue behind
    # them: the client acks the PING only after reading the replies, and core closes only after that ack.
    started = loop.time()
    await servicer.drain(DRAIN_GRACE_SECONDS)
    if slots is not None:  # slot requests are refused from now on too; admitted ones finish first
        await _drain_slots(servicer, slots, started + DRAIN_GRACE_SECONDS)
    log_event(log, "replies_sent", seconds=f"{loop.time() - started:.2f}", unsent=servicer.unsent)
    await server.stop(max(0.0, started + DRAIN_GRACE_SECONDS - loop.time()))
    servicer.batcher.close()
    log_event(log, "stopped")


async def _drain_slots(servicer: ExpertServicer, slots: SlotServer, deadline: float) -> None:
    """Let admitted shared-memory requests finish (their replies are rung from the compute thread), then drop
    the links: gateways see EOF and send what comes next to other replicas."""
    while servicer.inflight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await slots.close()
