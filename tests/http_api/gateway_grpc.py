"""The gateway's gRPC surface as server.py assembles it (servicer, health, API-key interceptor), on a free
port of 127.0.0.1, for tests that drive a real grpc.aio server over an EngineService."""

from __future__ import annotations

import contextlib

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from eaas.gateway.auth import grpc_interceptors
from eaas.gateway.grpc_api import GatewayServicer
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S
from eaas.protos import gateway_pb2, gateway_pb2_grpc


@contextlib.asynccontextmanager
async def grpc_gateway(service, key: str | None = None, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S,
                       max_concurrent_streams: int = 64):
    server = grpc.aio.server(interceptors=grpc_interceptors(key),
                             options=[("grpc.max_concurrent_streams", max_concurrent_streams)])
    gateway_pb2_grpc.add_GatewayServicer_to_server(
        GatewayServicer(service, "tiny-mixtral", lambda: gateway_pb2.GatewayInfo(model_name="tiny-mixtral"),
                        stall_timeout_s), server)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)
