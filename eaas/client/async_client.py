"""asyncio client (grpc.aio): same behaviour as SyncClient — streaming, deadline, failover with resume."""

from __future__ import annotations

import asyncio
import time
from typing import AsyncIterator

import grpc

from eaas.client.common import (RETRYABLE, Chunk, Completion, GenerationError, build_request, normalize_addresses,
                                resumed_request, to_chunk)
from eaas.protos import gateway_pb2, gateway_pb2_grpc


class AsyncClient:
    def __init__(self, addresses, timeout: float = 60.0, retries: int = 4, backoff_s: float = 0.2):
        self.addresses = normalize_addresses(addresses)
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._channels = {a: grpc.aio.insecure_channel(a) for a in self.addresses}
        self._stubs = {a: gateway_pb2_grpc.GatewayStub(c) for a, c in self._channels.items()}
        self._next = 0

    async def generate_stream(self, **kwargs) -> AsyncIterator[Chunk]:
        req = build_request(**kwargs)
        deadline = time.monotonic() + self.timeout
        received: list[int] = []
        failures = 0
        while True:
            address = self.addresses[self._next % len(self.addresses)]
            attempt = resumed_request(req, received) if received else req
            try:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GenerationError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self.timeout}s")
                async for msg in self._stubs[address].Generate(attempt, timeout=remaining):
                    chunk = to_chunk(msg)
                    received.extend(chunk.token_ids)
                    yield chunk
                    if chunk.finish_reason:
                        return
                return
            except grpc.aio.AioRpcError as err:
                code = err.code()
                if code not in RETRYABLE or failures >= self.retries:
                    raise GenerationError(code, err.details() or str(code)) from None
                failures += 1
                self._next += 1
                await asyncio.sleep(min(self.backoff_s * failures, max(0.0, deadline - time.monotonic())))

    async def generate(self, **kwargs) -> Completion:
        done = Completion()
        async for chunk in self.generate_stream(**kwargs):
            done.add(chunk)
        return done

    async def info(self, timeout: float = 5.0) -> gateway_pb2.GatewayInfo:
        return await self._stubs[self.addresses[self._next % len(self.addresses)]].Info(
            gateway_pb2.GatewayInfoRequest(), timeout=timeout)

    async def close(self) -> None:
        for c in self._channels.values():
            await c.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
