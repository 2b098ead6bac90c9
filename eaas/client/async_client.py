"""asyncio client (grpc.aio): same behaviour as SyncClient — streaming, deadline, failover with resume."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from eaas.client.common import Chunk, Completion, GatewayClientBase, ResumableStream, build_request
from eaas.protos import gateway_pb2


class AsyncClient(GatewayClientBase):
    @staticmethod
    def _open_channel(address: str, credentials):
        return grpc.aio.insecure_channel(address) if credentials is None else grpc.aio.secure_channel(address, credentials)

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
