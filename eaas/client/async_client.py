"""asyncio client (grpc.aio): same behaviour as SyncClient — streaming, deadline, failover with resume."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import grpc

from eaas.client.common import Chunk, Completion, GatewayClientBase, ResumableStream, build_request
from eaas.protos import gateway_pb2


class AsyncClient(GatewayClientBase):
    def __init__(self, *args, **kwargs):
        self._closing: set[asyncio.Task] = set()
        super().__init__(*args, **kwargs)

    @staticmethod
    def _open_channel(address: str, credentials, options: list):
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options)
        return grpc.aio.secure_channel(address, credentials, options=options)

    def _close_channel(self, channel) -> None:  # a replaced channel whose last call ended, on the loop
        task = asyncio.get_running_loop().create_task(channel.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def generate_stream(self, **kwargs) -> AsyncIterator[Chunk]:
        stream = ResumableStream(build_request(**kwargs), self.addresses, self._next, self.timeout, self.retries,
                                 self.backoff_s)
        while True:
            address, attempt, remaining = stream.next_attempt()
            try:
                with self._channels.lease(address) as stub:
                    async for msg in stub.Generate(attempt, timeout=remaining, metadata=self._metadata):
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
        with self._channels.lease(self.addresses[self._next % len(self.addresses)]) as stub:
            return await stub.Info(gateway_pb2.GatewayInfoRequest(), timeout=timeout, metadata=self._metadata)

    async def close(self) -> None:
        for c in self._channels.open_channels():
            await c.close()
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
