"""The engine in its own thread, with asyncio-facing streaming requests (the gateway's core).

Requests arrive from gRPC/HTTP handlers on the event loop; the engine thread adds them to the engine
between steps, runs one step at a time and posts each new token back to the request's asyncio queue.
At most --max-queued-requests new requests wait (preempted ones, already admitted once, are not
counted): beyond that a request is refused at once (QueueFull) with a Retry-After from the queue's
drain rate (retry_after.py), so a flood costs neither memory nor time. Context caching and session resume go through an optional KV pool
(eaas.mempool): a new request brings the longest cached prefix to the engine, and the blocks each step
output carries are offered to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from eaas.engine.kv_budget import DEFAULT_MAX_QUEUED
from eaas.engine.llm_engine import LLMEngine, RequestError, RequestHandle, StepOutput
from eaas.engine.sequence import SamplingParams, Sequence
from eaas.gateway.detokenizer import IncrementalDetokenizer
from eaas.gateway.metrics import GatewayMetrics
from eaas.gateway.retry_after import DrainRate

log = logging.getLogger("eaas.gateway")


class GenerationFailed(Exception):
    """A request that could not complete (e.g. no replica left for an expert); `code` is a gRPC-style name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class QueueFull(GenerationFailed):
    """Refused on arrival: --max-queued-requests requests already wait (HTTP 429, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, queued: int, retry_after_s: int):
        super().__init__("resource_exhausted", f"the gateway is at capacity: {queued} requests already queued; "
                                               f"retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s



@dataclass
class TokenEvent:
    token_ids: list[int]
    text: str
    index: int                      # position of token_ids[0] among the generated tokens
    finish_reason: str | None = None
    logprobs: list | None = None    # a TokenLogprobs per token id, when the request asked for logprobs
    prompt_logprobs: list | None = None  # on the first event, when it asked for them: [None, TokenLogprobs...]


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    resumed_ids: list[int]          # generated tokens the client already has (session resume)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrived: float = field(default_factory=time.perf_counter)
    handle: RequestHandle | None = None
    ended: bool = False             # the caller is done with it (set on the loop; the engine thread checks it)
    last_token_at: float | None = None
    detokenizer: IncrementalDetokenizer | None = None
    cached_blocks: list = field(default_factory=list)  # the pool's blocks of the prompt, found at arrival
    pool_writes: list = field(default_factory=list)    # this request's inserts still in flight (futures)

    @property
    def seq(self) -> Sequence | None:
        return self.handle.seq if self.handle else None

    def end(self) -> None:
        """Stop generating for it. Safe against the engine thread creating the handle at the same moment:
        `ended` is set before `handle` is read here, and `handle` is set before `ended` is read there."""
        self.ended = True
        if self.handle is not None:
            self.handle.finish()


class TokenStream:
    """One request's events, as an async iterator. Nothing is queued before the first __anext__.

    finish(): the caller ends the request as complete (a stop string matched): the rest is not
    generated, and it counts "ok". aclose(): the caller went away: it counts "cancelled".
    """

    def __init__(self, service: "EngineService", prompt_ids: list[int], params: SamplingParams, request_id: str,
                 resume_ids: list[int]):
        self._service = service
        self._args = (prompt_ids, params, request_id, resume_ids)
        self._req: _Request | None = None
        self._done = False

    def __aiter__(self) -> "TokenStream":
        return self

    async def __anext__(self) -> TokenEvent:
        if self._done:
            raise StopAsyncIteration
        if self._req is None:
            self._req = await self._service._submit(*self._args)
        try:
            item = await self._req.events.get()
        except BaseException:  # cancelled while waiting: the consumer is gone
            self._end("cancelled")
            raise
        if isinstance(item, Exception):
            self._end("failed")
            raise item
        if item.finish_reason:
            await self._service._pool_writes_done(self._req)  # a follow-up request can then reuse all of this one
            self._end("ok")
        return item

    def finish(self) -> None:
        self._end("ok")

    async def aclose(self) -> None:
        self._end("cancelled")

    def _end(self, status: str) -> None:
        if self._done:
            return
        self._done = True
        if self._req is None:
            return  # never started: nothing queued, nothing counted
        if status != "failed" and not (self._req.seq is not None and self._req.seq.is_finished):
            self._service._end(self._req)
        self._service.metrics.request_done(status)


class EngineService:
    def __init__(self, engine: LLMEngine, tokenizer=None, kv_pool=None, metrics: GatewayMetrics | None = None,
                 max_queued_requests: int = DEFAULT_MAX_QUEUED):
        self.engine = engine
        self.tokenizer = tokenizer
        self.kv_pool = kv_pool      # eaas.mempool.SyncKVPool or None
        if kv_pool is not None:     # step outputs then carry the blocks each sequence completes, in the pool's size
            engine.export_block_size = kv_pool.block_size
        self.metrics = metrics or GatewayMetrics()
        self.max_queued_requests = max_queued_requests
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._live: dict[int, _Request] = {}
        self._ended: deque[_Request] = deque()  # ended by their callers; forgotten once the engine freed them
        self._preemptions_seen = 0
        self._started_seen = 0
        self.drain = DrainRate()    # requests leaving the queue to run: Retry-After of a refusal
        self._thread = threading.Thread(target=self._run, name="eaas-engine", daemon=True)

    # --- lifecycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    @property
    def busy(self) -> int:
        return len(self._live)

    @property
    def queued(self) -> int:
        """Requests waiting for the engine that never ran, as last seen from any thread (preempted ones
        are not counted: see LLMEngine.queued_new)."""
        return self._inbox.qsize() + self.engine.queued_new

    @property
    def alive(self) -> bool:
        """The engine thread runs (the gateway's /health)."""
        return self._thread.is_alive()

    # --- the asyncio side -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise RequestError("this model has no tokenizer: send token ids instead of text")
        return list(self.tokenizer(text)["input_ids"])

    def check_stop_strings(self, stops) -> None:
        """Stop strings are matched in the text, and a model without a tokenizer streams none: ignoring them
        would generate past where the client asked to stop, so they are refused."""
        if stops and self.tokenizer is None:
            raise RequestError("stop strings need the model's tokenizer, and this model has none: end on token ids "
                               "with stop_token_ids", "stop")

    def resumed_texts(self, resume_ids: list[int]) -> list[str]:
        """The text each of resume_ids added when a gateway streamed them (one token per event)."""
        self.engine.check_token_ids(resume_ids, "resume")
        return IncrementalDetokenizer(self.tokenizer).replay(resume_ids)

    def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "",
                 resume_ids: list[int] | None = None) -> TokenStream:
        """Stream the completion. resume_ids: tokens a previous gateway already sent for this request.
        Raises (on the first iteration) RequestError for bad input, QueueFull when the queue is full."""
        return TokenStream(self, list(prompt_ids), params, request_id, list(resume_ids or []))

    async def _submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str,
                      resume_ids: list[int]) -> _Request:
        if resume_ids:
            if len(resume_ids) >= params.max_tokens:
                raise RequestError("resume_token_ids already hold max_tokens tokens")
            params = SamplingParams(**{**params.__dict__, "max_tokens": params.max_tokens - len(resume_ids),
                                       "first_token_index": params.first_token_index + len(resume_ids),
                                       "min_tokens": max(0, params.min_tokens - len(resume_ids))})
        full_prompt = prompt_ids + resume_ids
        self.engine.check_request(full_prompt, params)  # raises RequestError before anything is queued
        req = _Request(full_prompt, params, request_id, resume_ids, asyncio.get_running_loop(), asyncio.Queue(),
                       detokenizer=IncrementalDetokenizer(self.tokenizer))
        req.detokenizer.replay(resume_ids)  # text continues where the client's left off
        if self.kv_pool is not None:  # looked up here, on the caller's loop: the engine thread never waits on it
            _, req.cached_blocks = await self.kv_pool.match_async(full_prompt)
        queued = self.queued  # counted with no await before the put: arrivals cannot all pass at once
        if queued >= self.max_queued_requests:
            self.metrics.requests_refused.inc()
            raise QueueFull(queued, self.drain.retry_after_s(queued))
        self.metrics.requests_started()
        self._inbox.put(req)
        self._wake.set()
        return req

    def _end(self, req: _Request) -> None:
        req.end()
        self._ended.append(req)
        self._wake.set()

    async def _pool_writes_done(self, req: _Request) -> None:
        pending = [f for f in req.pool_writes if not f.done()]
        if pending:  # each write is bounded by the pool's timeout
            await asyncio.gather(*(asyncio.wrap_future(f) for f in pending), return_exceptions=True)

    # --- the engine thread ----------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._drain_inbox()
            if not self.engine.has_unfinished():
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed forward fails the sequences that were in it
                self._fail_running(exc)
                continue
            finally:
                self._forget_ended()
                self._publish_engine_state()
            now = time.perf_counter()
            events: dict[asyncio.AbstractEventLoop, list] = {}
            for out in outputs:
                req = self._live.get(out.seq.seq_id)
                if req is None:
                    continue
                self._offer_new_blocks(req, out)
                events.setdefault(req.loop, []).append((req, self._token_event(req, out, now)))
            for loop, items in events.items():
                self._post_all(loop, items)

    def _forget_ended(self) -> None:
        """Drop the requests their callers ended, once the engine has freed them (finish() acts at a step)."""
        for _ in range(len(self._ended)):
            req = self._ended.popleft()
            if req.seq is None:  # never added: _drain_inbox skips it
                continue
            if req.seq.is_finished:
                self._live.pop(req.seq.seq_id, None)
            else:
                self._ended.append(req)

    def _publish_engine_state(self) -> None:
        e = self.engine
        self.metrics.set_queue(len(e.waiting) + self._inbox.qsize(), len(e.running))
        self.metrics.set_kv_blocks(e.blocks.num_used, e.blocks.num_free)
        self.drain.record(e.num_started - self._started_seen)
        self._started_seen = e.num_started
        if e.num_preemptions > self._preemptions_seen:
            self.metrics.preemptions.inc(e.num_preemptions - self._preemptions_seen)
            self._preemptions_seen = e.num_preemptions

    def _drain_inbox(self) -> None:
        while True:
            try:
                req = self._inbox.get_nowait()
            except queue.Empty:
                return
            if req.ended:  # the caller left before it was queued
                continue
            req.handle = self.engine.add_request(req.prompt_ids, req.params, req.cached_blocks, req.request_id)
            req.cached_blocks = []  # the engine holds them until the request runs
            self._live[req.seq.seq_id] = req
            if req.ended:  # see _Request.end
                req.handle.finish()
                self._ended.append(req)

    def _token_event(self, req: _Request, out: StepOutput, now: float) -> TokenEvent:
        seq = req.seq
        if req.last_token_at is None:
            self.metrics.ttft.observe(now - req.arrived)
            self.metrics.prefill_tokens_reused.inc(seq.imported_tokens)
        else:
            self.metrics.itl.observe(now - req.last_token_at)
        req.last_token_at = now
        self.metrics.tokens_generated.inc()
        index = len(req.resumed_ids) + len(seq.output_ids) - 1
        ids = req.resumed_ids + seq.output_ids if req.resumed_ids else seq.output_ids
        text = req.detokenizer.step(ids, final=seq.is_finished)
        event = TokenEvent([out.token_id], text, index, seq.finish_reason if seq.is_finished else None,
                           None if out.logprobs is None else [out.logprobs], out.prompt_logprobs)
        if seq.is_finished:
            self._live.pop(seq.seq_id, None)
        return event

    def _post_all(self, loop: asyncio.AbstractEventLoop, items: list[tuple[_Request, object]]) -> None:
        """Hand a step's events to their loop in one wake-up (measured: one call_soon_threadsafe per token
        made the loop thread wake 64 times a step and take the GIL from this thread each time); a closed
        loop means nobody listens: abort, never die."""
        try:
            loop.call_soon_threadsafe(_put_all, items)
        except RuntimeError:
            for req, _ in items:
                self.engine.abort(req.seq)
                self._live.pop(req.seq.seq_id, None)

    def _post(self, req: _Request, item) -> None:
        self._post_all(req.loop, [(req, item)])

    def _fail_running(self, exc: Exception) -> None:
        """A failed forward fails the sequences that were in it; queued requests keep their turn."""
        code = getattr(exc, "code", None)  # a grpc.StatusCode on the remote backend's errors
        name = code.name.lower() if hasattr(code, "name") else "internal"
        log.error("engine step failed: %s", exc)
        failure = GenerationFailed(name, str(exc))
        # a failure before anything was admitted would repeat forever: then every live request fails
        victims = list(self.engine.running) or [req.seq for req in self._live.values()]
        for seq in victims:
            self.engine.abort(seq)
            req = self._live.pop(seq.seq_id, None)
            if req is not None:
                self._post(req, failure)

    # --- MemPool: context caching and resume ----------------------------------------------------
    def _offer_new_blocks(self, req: _Request, out: StepOutput) -> None:
        """Give the pool the blocks this step completed, without waiting: the write runs on the pool's
        thread while the engine steps on (a stalled Redis stalls no batch). A write the pool's full
        backlog refuses is dropped, counted as eaas_mempool_errors_total{kind="backlog"}: the pool is a
        cache, and keeping refused blocks to offer again would grow memory with every request while the
        store is slow, which is what the backlog bound prevents."""
        if self.kv_pool is None or not out.new_blocks:
            return
        full = out.first_block + len(out.new_blocks)
        tokens = req.seq.token_ids[:full * self.kv_pool.block_size]
        write = self.kv_pool.insert_in_background(tokens, [None] * out.first_block + out.new_blocks)
        if write is not None:
            req.pool_writes = [f for f in req.pool_writes if not f.done()] + [write]


def _put_all(items: list) -> None:
    """On the requests' loop: each event into its request's queue, in step order."""
    for req, item in items:
        req.events.put_nowait(item)
