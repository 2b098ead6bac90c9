"""A client that stops reading cannot pin a sequence: a write that does not drain in time aborts the stream.

Both APIs hand each piece of output to a buffer that blocks once full (aiohttp: the transport's write
buffer above its high-water mark makes `write` wait in drain(); gRPC: a stream whose HTTP/2 window the
client never reopens makes `context.write` wait). `write_or_stall` bounds that wait: past the timeout the
caller aborts the generation (its KV is freed at the next engine step), closes the stream, counts it in
eaas_gateway_stalled_streams_total{api} and logs one line.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger("eaas.gateway")

DEFAULT_STALL_TIMEOUT_S = 30.0  # a reader slower than one token per this long is gone, not slow


class ClientStalled(Exception):
    """The client read none of the stream's output for the stall timeout."""


async def write_or_stall(write, timeout_s: float, metrics, api: str, request_id: str):
    """Await `write` (a coroutine); ClientStalled if it has not completed after `timeout_s`."""
    try:
        return await asyncio.wait_for(write, timeout_s)
    except asyncio.TimeoutError:
        metrics.stalled_streams.labels(api).inc()
        log.warning("client stalled: %s stream %s read nothing for %.1f s; aborting it and freeing its KV",
                    api, request_id, timeout_s)
        raise ClientStalled(f"the client read nothing for {timeout_s:g} s") from None
