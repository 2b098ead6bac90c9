"""How a gateway's requests reach an expert server.

`ExpertTransport` is the small interface RemoteExpertBackend uses (four calls), so a faster transport
(shared memory, RDMA) can replace gRPC without touching dispatch or failover.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Protocol

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from eaas.protos import expert_pb2, expert_pb2_grpc
from eaas.rpc.combine_payload import CombinePayload, as_request
from eaas.rpc.wire import TRANSPORT_MESSAGE_BYTES
from eaas.tls import TLSFiles
from eaas.tls_credentials import ChannelCache

SERVICE_NAME = expert_pb2.DESCRIPTOR.services_by_name["ExpertService"].full_name  # also its health-check name


class ExpertTransport(Protocol):
    """How requests reach a server; a faster transport (shared memory, RDMA) implements the same four calls."""

    def combine(self, address: str, request: CombinePayload | expert_pb2.CombineRequest, timeout: float):
        """Start a Combine; returns a future with add_done_callback(fn(f)), exception() and result(): a
        CombineResponse, or for a CombinePayload the output tensor where the transport has it as one."""

    def info(self, address: str, timeout: float) -> expert_pb2.ServerInfo: ...

    def serving(self, address: str, timeout: float) -> bool: ...

    def close(self, address: str | None = None) -> None: ...


class GrpcTransport:
    """grpc.aio channels (one per address, kept open) driven by one private event-loop thread.

    `sends_on_caller_thread` False: a call is handed to the loop thread, which needs the GIL to send it, so
    a caller should not run Python right after handing calls over (RemoteExpertBackend's `meanwhile`).

    Measured against sync-channel futures (benchmarks/dispatch_overhead.py): two concurrent Combine calls
    complete faster this way, since a sync channel starts a polling thread per call burst.
    `tls`: mutual TLS to the expert servers (verify them against the CA file, present our certificate);
    rotated files take effect on new channels, opened for new calls once the files changed.
    `tls_server_name`: the name their certificates must carry, when it is not the address's host (pod IPs).
    """

    RETIRE_GRACE_S = 30.0  # a channel replaced after a rotation finishes its calls, then closes
    sends_on_caller_thread = False

    def __init__(self, tls: TLSFiles | None = None, tls_server_name: str | None = None):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="expert-rpc-loop", daemon=True)
        self._thread.start()
        self.tls_server_name = tls_server_name
        self._channels = ChannelCache(self._open, tls, self._retire)  # touched only on the loop thread

    def _open(self, address: str, credentials):
        options = [("grpc.max_receive_message_length", TRANSPORT_MESSAGE_BYTES),
                   ("grpc.max_send_message_length", TRANSPORT_MESSAGE_BYTES),
                   # a replica restarted on the same address is re-admitted within ~1 s, not after gRPC's 20 s minimum
                   ("grpc.initial_reconnect_backoff_ms", 100), ("grpc.min_reconnect_backoff_ms", 100),
                   ("grpc.max_reconnect_backoff_ms", 1000)]
        if credentials is None:
            channel = grpc.aio.insecure_channel(address, options=options)
        else:
            if self.tls_server_name:
                options.append(("grpc.ssl_target_name_override", self.tls_server_name))
            channel = grpc.aio.secure_channel(address, credentials, options=options)
        return channel, expert_pb2_grpc.ExpertServiceStub(channel), health_pb2_grpc.HealthStub(channel)

    def _retire(self, entry) -> None:
        self._loop.create_task(entry[0].close(grace=self.RETIRE_GRACE_S))

    def _stubs(self, address: str):
        return self._channels.get(address)

    def _submit(self, coroutine) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def combine(self, address, request, timeout):
        async def call():  # the message is built here, on the loop thread, not between the caller's sends
            return await self._stubs(address)[1].Combine(as_request(request), timeout=timeout)
        return self._submit(call())

    def info(self, address, timeout):
        async def call():
            return await self._stubs(address)[1].Info(expert_pb2.InfoRequest(), timeout=timeout, wait_for_ready=True)
        return self._submit(call()).result()

    def serving(self, address, timeout):
        async def call():
            request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
            return await self._stubs(address)[2].Check(request, timeout=timeout)
        try:
            return self._submit(call()).result().status == health_pb2.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def close(self, address=None):
        async def close_channels():
            for a in self._channels.addresses() if address is None else [address]:
                entry = self._channels.pop(a)
                if entry is not None:
                    await entry[0].close()
        if self._loop.is_running():
            self._submit(close_channels()).result()
        if address is None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
