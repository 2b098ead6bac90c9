"""asyncio client (grpc.aio): same behaviour as SyncClient — streaming, deadline, failover with resume."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from eaas.client.common import (Chunk, Completion, ResumableStream, auth_metadata, build_request,
                               normalize_addresses)
from eaas.protos import gateway_pb2, gateway_pb2_grpc


class AsyncClient:
    def __init__(self, addresses, timeout: float = 60.0, retries: int = 4, backoff_s: float = 0.2,
                 api_key: str | None = None):
        """api_key: sent as `authorization: Bearer <key>` metadata; default $EAAS_API_KEY."""
        self.addresses = normalize_addresses(addresses)
        self._metadata = auth_metadata(api_key)
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._channels = {a: grpc.aio.insecure_channel(a) for a in self.addresses}
        self._stubs = {a: gateway_pb2_grpc.GatewayStub(c) for a, c in self._channels.items()}
        self._next = 0

    async def generate_stream(self, **kwargs) -> AsyncIterator[Chunk]:
        stream = ResumableStream(build_request(**kwargs), self.addresses, self._next, self.timeout, self.retries,
                                 self.backoff_s)
        while True:
            address, attempt, remaining = stream.next_attempt()
            try:
                async for msg in self._stubs[address].Generate(attempt, timeout=remaining, metadata=self._metadata):
                    chunk = stream.got(msg)
                    yield chunk
                    if chunk.finish_reason:
                        return
                return
            except grpc.aio.AioRpcError as err:
                await asyncio.sleep(stream.failed(err.code(), err.details()))
                self._next = stream.attempt_index

    async def generate(self, **kwargs) -> Completion:
        done = Completion()
        async for chunk in self.generate_stream(**kwargs):
            done.add(chunk)
        return done

    async def info(self, timeout: float = 5.0) -> gateway_pb2.GatewayInfo:
        return await self._stubs[self.addresses[self._next % len(self.addresses)]].Info(
            gateway_pb2.GatewayInfoRequest(), timeout=timeout, metadata=self._metadata)

    async def close(self) -> None:
        for c in self._channels.values():
            await c.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
