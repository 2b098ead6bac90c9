"""A load generator for the OpenAI streaming API: N concurrent /v1/completions streams over one aiohttp session.

Each request sends token ids and asks for exactly `new_tokens` tokens: max_tokens = new_tokens, ignore_eos
(vLLM's extension, which eaas implements: EOS is generated like any token and does not end the stream),
greedy. Tokens are counted from the `token_ids` of every SSE chunk (eaas' extension: the exact ids),
not from text. The client runs on one event loop in one thread; its own CPU time is measured with the
batch, so a client that became the bottleneck would show.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp


def completion_body(prompt_ids: list[int], new_tokens: int) -> dict:
    """A streamed greedy completion of exactly new_tokens tokens."""
    return {"prompt": prompt_ids, "max_tokens": new_tokens, "ignore_eos": True, "temperature": 0, "stream": True}


@dataclass
class StreamTally:
    """What one SSE stream carried, fed line by line."""
    token_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False          # the closing `data: [DONE]` arrived

    def feed(self, line: bytes) -> None:
        """One line of the body; blank separators and comments carry nothing."""
        line = line.strip()
        if not line.startswith(b"data:"):
            return
        data = line[len(b"data:"):].strip()
        if data == b"[DONE]":
            self.done = True
            return
        payload = json.loads(data)
        if "error" in payload:
            self.error = payload["error"].get("message", str(payload["error"]))
            return
        for choice in payload.get("choices", ()):
            self.token_ids.extend(choice.get("token_ids") or ())
            self.finish_reason = choice.get("finish_reason") or self.finish_reason

    def complete(self, new_tokens: int) -> bool:
        return self.done and self.error is None and len(self.token_ids) == new_tokens


@dataclass(frozen=True)
class BatchResult:
    """One batch of concurrent streams: every stream's tally, the batch's wall time and the client's CPU."""
    tallies: list[StreamTally]
    wall_s: float
    client_cpu_s: float

    @property
    def tokens(self) -> int:
        return sum(len(t.token_ids) for t in self.tallies)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s

    def failed(self, new_tokens: int) -> int:
        return sum(1 for t in self.tallies if not t.complete(new_tokens))


async def stream_one(session: aiohttp.ClientSession, base_url: str, body: dict) -> StreamTally:
    tally = StreamTally()
    async with session.post(f"{base_url}/v1/completions", json=body) as resp:
        if resp.status != 200:
            tally.error = f"HTTP {resp.status}: {await resp.text()}"
            return tally
        async for line in resp.content:  # aiohttp splits the body at b"\n"
            tally.feed(line)
    return tally


async def stream_batch(base_url: str, prompts: list[list[int]], new_tokens: int) -> BatchResult:
    """All prompts streamed at once after one warm-up request; wall time from the first send to the last
    stream's end."""
    connector = aiohttp.TCPConnector(limit=0)  # every stream its own connection, all at once
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=900)) as session:
        await stream_one(session, base_url, completion_body(prompts[0], 2))
        cpu, start = time.process_time(), time.perf_counter()
        tallies = await asyncio.gather(*(stream_one(session, base_url, completion_body(p, new_tokens))
                                         for p in prompts))
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return BatchResult(list(tallies), wall, cpu)


def run_stream_batch(base_url: str, prompts: list[list[int]], new_tokens: int) -> BatchResult:
    return asyncio.run(stream_batch(base_url, prompts, new_tokens))
