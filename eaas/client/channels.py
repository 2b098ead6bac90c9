"""The SDK's channels to its gateways: one per address, reopened for new calls once the TLS files changed.

A long-lived client thereby presents a rotated client certificate (and trusts a rotated CA) on its next
connection without a restart — the same `ChannelCache` the gateway uses towards its expert servers. A
replaced channel is closed once the last call that runs on it has ended (a stream in flight finishes).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator

from eaas.protos import gateway_pb2_grpc
from eaas.tls import TLSFiles
from eaas.tls_credentials import ChannelCache


class _Entry:
    def __init__(self, channel):
        self.channel = channel
        self.stub = gateway_pb2_grpc.GatewayStub(channel)
        self.calls = 0        # calls running on this channel now
        self.retired = False  # replaced: close it when `calls` drops to 0


class GatewayChannels:
    def __init__(self, open_channel: Callable, close_channel: Callable, files: TLSFiles | None):
        """open_channel(address, credentials or None) -> channel; close_channel(channel) ends one."""
        self._close = close_channel
        self._cache = ChannelCache(lambda address, creds: _Entry(open_channel(address, creds)), files, self._retire)
        self._lock = threading.Lock()  # a SyncClient may be shared by threads

    @contextlib.contextmanager
    def lease(self, address: str) -> Iterator[gateway_pb2_grpc.GatewayStub]:
        """The stub for one call to `address`, on a channel built from the newest TLS files."""
        with self._lock:
            entry = self._cache.get(address)
            entry.calls += 1
        try:
            yield entry.stub
        finally:
            with self._lock:
                entry.calls -= 1
                done = entry.retired and entry.calls == 0
            if done:
                self._close(entry.channel)

    def _retire(self, entry: _Entry) -> None:  # ChannelCache.get, under self._lock
        entry.retired = True
        if entry.calls == 0:
            self._close(entry.channel)

    def open_channels(self) -> list:
        """The current channel of every address (for the client's close)."""
        with self._lock:
            return [entry.channel for entry in (self._cache.pop(a) for a in self._cache.addresses()) if entry]
