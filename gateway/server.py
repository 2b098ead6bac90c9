"""Assembles a gateway process: checkpoint -> remote expert backend -> engine thread -> gRPC + HTTP.

Background tasks keep the replica table fresh (Redis registry or the operator's topology), push the
per-expert routed-token counts to Prometheus and to the load statistics the autoscaler reads, and a
SIGTERM drains in-flight requests before exit.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from eaas.auth import ApiKeyFile
from eaas.engine.factory import engine_with_backend, load_tokenizer
from eaas.engine.kv_budget import DEFAULT_MAX_QUEUED
from eaas.engine.scheduler import ScheduleLimits
from eaas.errors import UserError
from eaas.rpc.micro_batches import DEFAULT_MICRO_BATCH_MIN_TOKENS, default_micro_batches
from eaas.rpc.slot_transport import make_transport
from eaas.gateway import discovery
from eaas.gateway.auth import grpc_interceptors
from eaas.gateway.engine_service import EngineService
from eaas.gateway.grpc_api import GatewayServicer
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S
from eaas.gateway.remote_backend import RemoteExpertBackend
from eaas.model.checkpoint import Checkpoint
from eaas.model.families import num_routed_experts
from eaas.protos import gateway_pb2, gateway_pb2_grpc
from eaas.tls import TLSFiles
from eaas.tls_credentials import grpc_server_credentials, https_server_context
from eaas.topology import format_expert_ids

log = logging.getLogger("eaas.gateway")
GATEWAY_SERVICE = "eaas.v1.Gateway"


def routed_since(previous: list[int], totals: list[int]) -> dict[int, int]:
    """{expert: tokens} added between two snapshots of cumulative per-expert counts (lists grow, never shrink)."""
    return {e: n - (previous[e] if e < len(previous) else 0) for e, n in enumerate(totals)
            if n > (previous[e] if e < len(previous) else 0)}


@dataclass
class GatewayOptions:
    model: str
    host: str = "0.0.0.0"
    grpc_port: int = 50050
    http_port: int = 8000
    expert_servers: str | None = None
    topology: str | None = None
    redis: str | None = None
    deployment: str = "local"
    dtype: str = "float32"
    max_num_seqs: int = 256
    max_batched_tokens: int = 4096
    micro_batches: int | None = None  # None: default_micro_batches(transport)
    micro_batch_min_tokens: int = DEFAULT_MICRO_BATCH_MIN_TOKENS
    prefix_cache: bool = True
    block_size: int = 16
    kv_cache_bytes: int | None = None   # None: kv_budget.py's default share of memory
    max_queued_requests: int = DEFAULT_MAX_QUEUED
    refresh_s: float = 2.0
    watch_endpoints: bool = False  # topology groups' replicas from an Endpoints watch, not DNS
    namespace: str | None = None  # of the watched Endpoints; None: the pod's own
    kubeconfig: str | None = None  # outside a pod
    drain_s: float = 30.0
    api_key: str | ApiKeyFile | None = None  # every RPC/route but health and /metrics needs it (Bearer)
    transport: str = "auto"  # expert data path: auto | shm | grpc (eaas/rpc/slot_transport.py)
    tls: TLSFiles | None = None  # cert+key: TLS on gRPC and HTTP; ca: mutual TLS to the expert servers
    client_tls: TLSFiles | None = None  # cert+key+the clients' CA: clients must show a certificate it signed
    expert_tls_name: str | None = None  # the name in the expert servers' certificates, if not their host
    max_concurrent_streams: int = 64  # per client connection (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS)
    stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S  # a stream not read for this long is aborted


class Gateway:
    def __init__(self, opts: GatewayOptions):
        self.opts = opts
        self.ckpt = Checkpoint(opts.model)
        self.fingerprint = self.ckpt.fingerprint()
        self.num_experts = num_routed_experts(self.ckpt.config)
        self.topology = discovery.load_topology(opts.topology) if opts.topology else None
        self.registry = None
        if opts.redis:
            from eaas.mempool import RegistryReader

            self.registry = RegistryReader.from_url(opts.redis, deployment=opts.deployment)
        self.endpoints = None
        if opts.watch_endpoints:
            from eaas.gateway.endpoints_watch import ApiAccess, EndpointsWatch, pod_namespace

            self.endpoints = EndpointsWatch(ApiAccess.discover(opts.kubeconfig), opts.namespace or pod_namespace())
        self.backend: RemoteExpertBackend | None = None
        self.service: EngineService | None = None
        self._stopping = asyncio.Event()

    # --- replica table --------------------------------------------------------------------------
    async def current_groups(self) -> list:
        if self.endpoints is not None:  # readiness-aware and immediate: the cluster's own truth
            return discovery.groups_from_endpoints(self.topology, self.endpoints.table)
        if self.registry is not None:
            groups = discovery.groups_from_registry(await self.registry.replicas(), self.fingerprint)
            if discovery.usable(groups, self.num_experts):
                return groups
        if self.topology is not None:
            return await asyncio.to_thread(discovery.groups_from_topology, self.topology)
        if self.opts.expert_servers:
            return discovery.parse_expert_servers(self.opts.expert_servers)
        return []

    async def _wait_for_table(self, timeout_s: float = 120.0) -> list:
        # In a cluster, a gateway without every expert is simply not Ready yet (its ports stay closed and the
        # startup probe waits): new expert groups may still be loading, so wait for them instead of exiting.
        deadline = asyncio.get_running_loop().time() + (float("inf") if self.endpoints is not None else timeout_s)
        while True:
            groups = await self.current_groups()
            if discovery.usable(groups, self.num_experts):
                return groups
            if asyncio.get_running_loop().time() > deadline:
                have = sorted({e for g in groups if g.addresses for e in g.expert_ids})
                raise UserError(f"no expert replicas for every expert after {timeout_s:.0f}s "
                                   f"(have experts {format_expert_ids(have) or 'none'} of 0-{self.num_experts - 1})")
            await asyncio.sleep(0.5)

    async def _next_change(self) -> None:
        """Until the Endpoints watch saw a change, or refresh_s for the polled sources."""
        if self.endpoints is None:
            await asyncio.sleep(self.opts.refresh_s)
            return
        try:
            await asyncio.wait_for(self.endpoints.changed.wait(), self.opts.refresh_s)
        except asyncio.TimeoutError:
            pass
        self.endpoints.changed.clear()

    async def _refresh_loop(self, last: list) -> None:
        """`last`: the table the backend already has (no need to verify it again)."""
        while not self._stopping.is_set():
            await self._next_change()
            try:
                groups = await self.current_groups()
                if groups != last and discovery.usable(groups, self.num_experts):
                    await asyncio.to_thread(self.backend.update_table, groups)
                    log.info("replica table: %s", discovery.format_expert_servers(groups))
                    last = groups
            except Exception as exc:  # discovery trouble never stops serving: keep the last table
                log.warning("replica table refresh failed: %s", exc)

    # --- load statistics ------------------------------------------------------------------------
    async def _load_loop(self, recorder) -> None:
        """Per-expert load for the autoscaler: what the backend counted (for Prometheus) since the last pass."""
        seen: list[int] = []
        while not self._stopping.is_set():
            await asyncio.sleep(1.0)
            totals = self.backend.metrics.tokens_routed.counts()
            counts = routed_since(seen, totals)
            seen = totals
            if counts:
                recorder.add(counts)

    # --- serving --------------------------------------------------------------------------------
    def _build_engine(self, groups) -> EngineService:
        self.backend = RemoteExpertBackend(groups, fingerprint=self.fingerprint, layers=self.ckpt.moe_layers(),
                                           transport=make_transport(self.opts.transport, self._expert_tls(),
                                                                    self.opts.expert_tls_name))
        o = self.opts
        engine = engine_with_backend(self.ckpt, self.backend, o.dtype,
                                     ScheduleLimits(o.max_num_seqs, o.max_batched_tokens),
                                     o.micro_batches or default_micro_batches(o.transport),
                                     o.kv_cache_bytes, o.block_size, o.micro_batch_min_tokens)
        log.info("KV cache: %d blocks of %d tokens, %.2f GiB preallocated", engine.blocks.num_blocks,
                 engine.block_size, engine.kv.nbytes / 2**30)
        kv_pool = None
        if o.prefix_cache:
            from eaas.mempool import SyncKVPool

            kv_pool = SyncKVPool.from_url(o.redis, deployment=o.deployment, fingerprint=self.fingerprint,
                                          block_size=o.block_size)
        return EngineService(engine, load_tokenizer(self.ckpt.path), kv_pool,
                             max_queued_requests=o.max_queued_requests)

    def _expert_tls(self) -> TLSFiles | None:
        tls = self.opts.tls
        return tls if tls is not None and tls.has_ca else None

    def gateway_info(self) -> gateway_pb2.GatewayInfo:
        """Built per Info call: expert_groups follows the live replica table."""
        live = self.backend.groups() if self.backend else []
        groups = [f"{g.name}={format_expert_ids(g.expert_ids)}" for g in live]
        return gateway_pb2.GatewayInfo(model_name=self.model_name, model_fingerprint=self.fingerprint,
                                       model_type=self.ckpt.family.model_type, num_experts=self.num_experts,
                                       expert_groups=groups)

    def grpc_servicer(self) -> GatewayServicer:
        return GatewayServicer(self.service, self.model_name, self.gateway_info, self.opts.stall_timeout_s)

    @property
    def model_name(self) -> str:
        return self.ckpt.path.name

    async def serve(self) -> None:
        o = self.opts
        watch = asyncio.create_task(self.endpoints.run()) if self.endpoints is not None else None
        groups = await self._wait_for_table()
        self.service = await asyncio.to_thread(self._build_engine, groups)
        self.service.start()

        server = grpc.aio.server(interceptors=grpc_interceptors(o.api_key),
                                 options=[("grpc.max_receive_message_length", 16 << 20),
                                          ("grpc.max_concurrent_streams", o.max_concurrent_streams)])
        gateway_pb2_grpc.add_GatewayServicer_to_server(self.grpc_servicer(), server)
        health_servicer = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection([GATEWAY_SERVICE, reflection.SERVICE_NAME, health.SERVICE_NAME], server)
        serve_tls = o.tls is not None and o.tls.has_identity
        if serve_tls and self._expert_tls() is None:
            log.warning("clients get TLS but expert servers are reached in plaintext: give --tls-ca-file for "
                        "mutual TLS to them")
        try:
            grpc_port = (server.add_secure_port(f"{o.host}:{o.grpc_port}", grpc_server_credentials(
                             o.client_tls or o.tls, require_client_cert=o.client_tls is not None))
                         if serve_tls else server.add_insecure_port(f"{o.host}:{o.grpc_port}"))
        except RuntimeError:  # grpc's way of saying the address cannot be bound
            raise UserError(f"--grpc-port {o.grpc_port}: cannot listen on {o.host}:{o.grpc_port}") from None
        await server.start()

        from aiohttp import web

        from eaas.gateway.openai_http import build_http_app

        runner = web.AppRunner(build_http_app(self.service, self.model_name, o.api_key, o.stall_timeout_s))
        await runner.setup()
        site = web.TCPSite(runner, o.host, o.http_port,
                           ssl_context=https_server_context(o.client_tls or o.tls, o.client_tls is not None)
                           if serve_tls else None)
        try:
            await site.start()
        except OSError as exc:
            raise UserError(f"--http-port {o.http_port}: cannot listen on {o.host}:{o.http_port}: "
                            f"{exc.strerror}") from None
        for svc in ("", GATEWAY_SERVICE):
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.SERVING)
        http_port = runner.addresses[0][1] if runner.addresses else o.http_port
        log.info("gateway ready grpc=%s:%d http=%s:%d tls=%s expert_tls=%s model=%s fingerprint=%s groups=%s",
                 o.host, grpc_port, o.host, http_port,
                 ("mutual" if o.client_tls else "on") if serve_tls else "off",
                 "mutual" if self._expert_tls() else "off", self.model_name, self.fingerprint,
                 discovery.format_expert_servers(groups))
        scheme = "https" if serve_tls else "http"
        print(f"eaas gateway ready: grpc {o.host}:{grpc_port} http {scheme}://{o.host}:{http_port}", flush=True)

        recorder = None
        if o.redis:
            from eaas.mempool import LoadRecorder

            recorder = LoadRecorder.from_url(o.redis, deployment=o.deployment)
            recorder.start()
        tasks = [asyncio.create_task(self._refresh_loop(groups)), *([watch] if watch else [])]
        if recorder is not None:
            tasks.append(asyncio.create_task(self._load_loop(recorder)))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        await self._stopping.wait()

        log.info("draining: %d requests in flight", self.service.busy)
        for svc in ("", GATEWAY_SERVICE):
            await health_servicer.set(svc, health_pb2.HealthCheckResponse.NOT_SERVING)
        await server.stop(grace=o.drain_s)  # refuses new RPCs, lets streams finish
        await runner.cleanup()
        for t in tasks:
            t.cancel()
        if recorder is not None:
            await recorder.stop()
        self.service.stop()
        self.backend.close()
        log.info("gateway stopped")
