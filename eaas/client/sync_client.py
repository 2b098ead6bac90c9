"""Blocking client: streams tokens, fails over to the next gateway and resumes the same session."""

from __future__ import annotations

import time
from typing import Iterator

import grpc

from eaas.client.common import Chunk, Completion, GatewayClientBase, ResumableStream, build_request
from eaas.protos import gateway_pb2


class SyncClient(GatewayClientBase):
    """SyncClient(["host:50050", "host2:50050"], timeout=60).generate(prompt_ids=[1, 2], max_tokens=8)."""

    @staticmethod
    def _open_channel(address: str, credentials, options: list):
        if credentials is None:
            return grpc.insecure_channel(address, options=options)
        return grpc.secure_channel(address, credentials, options=options)

    def _close_channel(self, channel) -> None:
        channel.close()

    def generate_stream(self, **kwargs) -> Iterator[Chunk]:
        """Yield chunks as they come; on a retryable failure continue on another gateway (resume)."""
        stream = ResumableStream(build_request(**kwargs), self.addresses, self._next, self.timeout, self.retries,
                                 self.backoff_s)
        while True:
            address, attempt, remaining = stream.next_attempt()
            try:
                with self._channels.lease(address) as stub:
                    for msg in stub.Generate(attempt, timeout=remaining, metadata=self._metadata):
                        chunk = stream.got(msg)
                        yield chunk
                        if chunk.finish_reason:
                            return
                return
            except grpc.RpcError as err:
                time.sleep(stream.failed(err.code(), err.details()))
                self._next = stream.attempt_index

    def generate(self, **kwargs) -> Completion:
        done = Completion()
        for chunk in self.generate_stream(**kwargs):
            done.add(chunk)
        return done

    def info(self, timeout: float = 5.0) -> gateway_pb2.GatewayInfo:
        with self._channels.lease(self.addresses[self._next % len(self.addresses)]) as stub:
            return stub.Info(gateway_pb2.GatewayInfoRequest(), timeout=timeout, metadata=self._metadata)

    def close(self) -> None:
        for c in self._channels.open_channels():
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
