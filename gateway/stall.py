"""A client that stops reading cannot pin a sequence: a write that does not drain in time aborts the stream.

Both APIs hand each piece of output to a buffer that blocks once full (aiohttp: the transport's write
buffer above its high-water mark makes `write` wait in drain(); gRPC: a stream whose HTTP/2 window the
client never reopens makes `context.write` wait). An SSE stream's buffers are bounded first
(`bound_stream_buffers`): the kernel would otherwise autotune a loopback send buffer to megabytes, and a
stalled client would hold that much memory and thousands of tokens before its write ever waited. `write_or_stall` bounds that wait: past the timeout the
caller aborts the generation (its KV is freed at the next engine step), closes the stream, counts it in
eaas_gateway_stalled_streams_total{api} and logs one line.
"""

from __future__ import annotations

import asyncio
import logging
import socket

log = logging.getLogger("eaas.gateway")

DEFAULT_STALL_TIMEOUT_S = 30.0  # a reader slower than one token per this long is gone, not slow


STREAM_BUFFER_BYTES = 16 << 10  # per SSE stream, kernel and transport each: ~100 token events; 32 KiB in
                                # flight still carries ~1,800 tokens/s over a 100 ms round trip


def bound_stream_buffers(transport) -> None:
    """Cap what a streaming HTTP response may buffer for a client that does not read."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_BUFFER_BYTES)  # ends autotuning
    transport.set_write_buffer_limits(high=STREAM_BUFFER_BYTES)


class ClientStalled(Exception):
    """The client read none of the stream's output for the stall timeout."""


async def write_or_stall(write, timeout_s: float, metrics, api: str, request_id: str):
    """Await `write` (a coroutine); ClientStalled if it has not completed after `timeout_s`."""
    try:
        async with asyncio.timeout(timeout_s):  # no task per write, unlike wait_for
            return await write
    except TimeoutError:
        metrics.stalled_streams.labels(api).inc()
        log.warning("client stalled: %s stream %s read nothing for %.1f s; aborting it and freeing its KV",
                    api, request_id, timeout_s)
        raise ClientStalled(f"the client read nothing for {timeout_s:g} s") from None
