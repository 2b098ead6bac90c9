"""Blocking client: streams tokens, fails over to the next gateway and resumes the same session."""

from __future__ import annotations

import time
from typing import Iterator

import grpc

from eaas.client.common import (RETRYABLE, Chunk, Completion, GenerationError, build_request, normalize_addresses,
                                resumed_request, to_chunk)
from eaas.protos import gateway_pb2, gateway_pb2_grpc


class SyncClient:
    """SyncClient(["host:50050", "host2:50050"], timeout=60).generate(prompt_ids=[1, 2], max_tokens=8)."""

    def __init__(self, addresses, timeout: float = 60.0, retries: int = 4, backoff_s: float = 0.2):
        self.addresses = normalize_addresses(addresses)
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._channels = {a: grpc.insecure_channel(a) for a in self.addresses}
        self._stubs = {a: gateway_pb2_grpc.GatewayStub(c) for a, c in self._channels.items()}
        self._next = 0

    def generate_stream(self, **kwargs) -> Iterator[Chunk]:
        """Yield chunks as they come; on a retryable failure continue on another gateway (resume)."""
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
                for msg in self._stubs[address].Generate(attempt, timeout=remaining):
                    chunk = to_chunk(msg)
                    received.extend(chunk.token_ids)
                    yield chunk
                    if chunk.finish_reason:
                        return
                return
            except grpc.RpcError as err:
                code = err.code()
                if code not in RETRYABLE or failures >= self.retries:
                    raise GenerationError(code, err.details() or str(code)) from None
                failures += 1
                self._next += 1  # another gateway, same session, continuing after `received`
                time.sleep(min(self.backoff_s * failures, max(0.0, deadline - time.monotonic())))

    def generate(self, **kwargs) -> Completion:
        done = Completion()
        for chunk in self.generate_stream(**kwargs):
            done.add(chunk)
        return done

    def info(self, timeout: float = 5.0) -> gateway_pb2.GatewayInfo:
        return self._stubs[self.addresses[self._next % len(self.addresses)]].Info(
            gateway_pb2.GatewayInfoRequest(), timeout=timeout)

    def close(self) -> None:
        for c in self._channels.values():
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
