"""n generations of one prompt as one stream of (choice index, TokenEvent).

The first choice runs alone until its first token: by then the engine has named its prompt's full KV
blocks, so the other n - 1 start from those blocks (prefix cache) and compute only the prompt's last,
partial block instead of the whole prompt. Bad input fails on the first choice, before anything is sent.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService, TokenEvent, TokenStream

_END = object()


class ChoiceStreams:
    def __init__(self, service: EngineService, prompt_ids: list[int], params: list[SamplingParams], request_id: str):
        self.streams: list[TokenStream] = [
            service.generate(prompt_ids, p, request_id if len(params) == 1 else f"{request_id}-{i}")
            for i, p in enumerate(params)]
        self._tasks: list[asyncio.Task] = []

    def finish(self, index: int) -> None:
        """Choice `index` is complete (a stop string): end its generation, counted "ok"."""
        self.streams[index].finish()
        if self._tasks:
            self._tasks[index].cancel()  # it may be waiting for a token that will never come

    async def events(self) -> AsyncIterator[tuple[int, TokenEvent]]:
        first = self.streams[0]
        try:
            yield 0, await first.__anext__()
            if len(self.streams) == 1:
                async for event in first:
                    yield 0, event
                return
            queue: asyncio.Queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._pump(i, s, queue)) for i, s in enumerate(self.streams)]
            running = len(self._tasks)
            while running:
                index, item = await queue.get()
                if item is _END:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in self._tasks:
                task.cancel()
            for stream in self.streams:
                await stream.aclose()

    @staticmethod
    async def _pump(index: int, stream: TokenStream, queue: asyncio.Queue) -> None:
        try:
            async for event in stream:
                queue.put_nowait((index, event))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer, which raises it
            queue.put_nowait((index, exc))
        finally:
            queue.put_nowait((index, _END))
