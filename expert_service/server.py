"""The expert server: gRPC `ExpertService` (Combine, Info) + health + reflection over one set of experts.

Stateless: a request carries everything needed, so any replica of a group gives the same answer.
Admission control: at most `max_inflight` Combine requests are admitted (queued or computing); more are
answered RESOURCE_EXHAUSTED at once, so a burst never grows memory without bound (each request is also
capped at MAX_MESSAGE_BYTES). SIGTERM: health goes NOT_SERVING, new RPCs are refused, admitted ones finish.
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
from eaas.expert_service.logs import log_event
from eaas.expert_service.metrics import ExpertServerMetrics
from eaas.expert_service.slot_server import SlotServer
from eaas.expert_service.wire import NAME_BY_DTYPE, ServedExperts, WireError, decode_combine, encode_tensor
from eaas.model.experts import ExpertWeights
from eaas.protos import expert_pb2, expert_pb2_grpc
from eaas.topology import format_expert_ids

log = logging.getLogger("eaas.expert_service")

MAX_MESSAGE_BYTES = 64 << 20        # largest CombineRequest served (e.g. 8192 tokens x 2048 hidden x fp32)
TRANSPORT_MESSAGE_BYTES = 2 * MAX_MESSAGE_BYTES  # gRPC's own limit: above ours, so ours answers first
DRAIN_GRACE_SECONDS = 30.0          # how long admitted requests may take to finish after SIGTERM
SERVICE_NAME = expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name


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
        try:
            job = decode_combine(request, self.served)
        except WireError as exc:
            self.metrics.requests.labels("INVALID_ARGUMENT").inc()
            log_event(log, "bad_request", logging.WARNING, request_id=request.request_id, error=exc)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        refusal = self.admit()
        if refusal:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, refusal)
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
        bound = server.add_insecure_port(f"{config.host}:{config.port}")
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
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log_event(log, "serving", address=f"{config.host}:{bound}", group=config.group,
              experts=format_expert_ids(servicer.info.expert_ids), layers=len(servicer.info.layers),
              dtype=servicer.info.dtype, device=servicer.info.device, max_inflight=config.max_inflight)
    if on_ready is not None:
        await on_ready(bound)
    await stop.wait()
    log_event(log, "draining", inflight=servicer.inflight)
    if on_drain is not None:
        await on_drain()
    await health.enter_graceful_shutdown()
    await server.stop(DRAIN_GRACE_SECONDS)  # refuses new RPCs; admitted ones finish within the grace
    if slots is not None:
        await _drain_slots(servicer, slots)
    servicer.batcher.close()
    log_event(log, "stopped")


async def _drain_slots(servicer: ExpertServicer, slots: SlotServer) -> None:
    """Let admitted shared-memory requests finish (as gRPC's grace does), then drop the links."""
    deadline = asyncio.get_running_loop().time() + DRAIN_GRACE_SECONDS
    while servicer.inflight and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.05)
    await slots.close()
