"""The engine in its own thread, with asyncio-facing streaming requests (the gateway's core).

Requests arrive from gRPC/HTTP handlers on the event loop; the engine thread admits them between
steps, runs one step at a time and posts each new token back to the request's asyncio queue.
Context caching and session resume go through an optional KV pool (eaas.mempool): a new request
imports the longest cached prefix, and every full block a sequence completes is offered to the pool.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import AsyncIterator

from eaas.engine.llm_engine import LLMEngine, RequestError
from eaas.engine.sequence import SamplingParams, Sequence
from eaas.gateway.detokenizer import IncrementalDetokenizer
from eaas.gateway.metrics import GatewayMetrics

log = logging.getLogger("eaas.gateway")


class GenerationFailed(Exception):
    """A request that could not complete (e.g. no replica left for an expert); `code` is a gRPC-style name."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


STOPPED_BY_CALLER = object()  # `await events.asend(STOPPED_BY_CALLER)`: the caller ends the stream as finished


@dataclass
class TokenEvent:
    token_ids: list[int]
    text: str
    index: int                      # position of token_ids[0] among the generated tokens
    finish_reason: str | None = None


@dataclass(eq=False)
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str
    resumed: int                    # generated tokens the client already has (session resume)
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue
    arrived: float = field(default_factory=time.perf_counter)
    seq: Sequence | None = None
    last_token_at: float | None = None
    offered_blocks: int = 0         # full KV blocks already offered to the pool
    detokenizer: IncrementalDetokenizer | None = None
    cached_prefix: tuple[int, list] = (0, [])  # (tokens, blocks) the pool held for the prompt at arrival
    pool_writes: list = field(default_factory=list)  # this request's inserts still in flight (futures)


class EngineService:
    def __init__(self, engine: LLMEngine, tokenizer=None, kv_pool=None, metrics: GatewayMetrics | None = None):
        self.engine = engine
        self.tokenizer = tokenizer
        self.kv_pool = kv_pool      # eaas.mempool.SyncKVPool or None
        self.metrics = metrics or GatewayMetrics()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._live: dict[int, _Request] = {}
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
    def alive(self) -> bool:
        """The engine thread runs (the gateway's /health)."""
        return self._thread.is_alive()

    # --- the asyncio side -----------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        if self.tokenizer is None:
            raise RequestError("this model has no tokenizer: send token ids instead of text")
        return list(self.tokenizer(text)["input_ids"])

    async def generate(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "",
                       resume_ids: list[int] | None = None) -> AsyncIterator[TokenEvent]:
        """Stream the completion. resume_ids: tokens a previous gateway already sent for this request.

        A caller that ends the request itself (a stop string matched) sends STOPPED_BY_CALLER with `asend`: the
        sequence is aborted and the request counted "ok"; closing the stream instead counts it "cancelled".
        """
        resume_ids = list(resume_ids or [])
        if resume_ids:
            if len(resume_ids) >= params.max_tokens:
                raise RequestError("resume_token_ids already hold max_tokens tokens")
            params = SamplingParams(**{**params.__dict__, "max_tokens": params.max_tokens - len(resume_ids),
                                       "first_token_index": params.first_token_index + len(resume_ids)})
        full_prompt = list(prompt_ids) + resume_ids
        self.engine.check_request(full_prompt, params)  # raises RequestError before anything is queued
        loop = asyncio.get_running_loop()
        req = _Request(full_prompt, params, request_id, len(resume_ids), loop, asyncio.Queue(),
                       detokenizer=IncrementalDetokenizer(self.tokenizer))
        if self.kv_pool is not None:  # looked up here, on the caller's loop: the engine thread never waits on it
            req.cached_prefix = await self.kv_pool.match_async(full_prompt)
        self.metrics.requests_started()
        self._inbox.put(("add", req))
        self._wake.set()
        status = "cancelled"
        try:
            while True:
                item = await req.events.get()
                if isinstance(item, Exception):
                    raise item
                if item.finish_reason:
                    status = "ok"  # before the yield: a consumer may stop right after the last event
                    await self._pool_writes_done(req)  # a follow-up request can then reuse all of this one
                reply = yield item
                if item.finish_reason:
                    return
                if reply is STOPPED_BY_CALLER:  # e.g. a stop string matched: a normal end, the rest is not run
                    status = "ok"
                    return
        except GenerationFailed:
            status = "failed"
            raise
        finally:
            if status != "failed" and (req.seq is None or not req.seq.is_finished):
                # the client went away or stopped early: free its slot (the inbox is FIFO: "add" comes first)
                self._inbox.put(("abort", req))
                self._wake.set()
            self.metrics.request_done(status)

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
            self.metrics.set_queue(len(self.engine.waiting), len(self.engine.running))
            try:
                outputs = self.engine.step()
            except Exception as exc:  # a failed forward fails the sequences that were in it
                self._fail_running(exc)
                continue
            now = time.perf_counter()
            for out in outputs:
                req = self._live.get(out.seq.seq_id)
                if req is None:
                    continue
                self._offer_new_blocks(req)
                self._post_token(req, out.token_id, now)

    def _drain_inbox(self) -> None:
        while True:
            try:
                op, req = self._inbox.get_nowait()
            except queue.Empty:
                return
            if op == "add":
                seq = self.engine.add_request(req.prompt_ids, req.params, req.request_id)
                req.seq = seq
                self._live[seq.seq_id] = req
                self._import_cached_prefix(req)
            elif op == "abort" and req.seq is not None and req.seq.seq_id in self._live:
                self.engine.abort(req.seq)
                self._live.pop(req.seq.seq_id, None)

    def _post_token(self, req: _Request, token: int, now: float) -> None:
        seq = req.seq
        if req.last_token_at is None:
            self.metrics.ttft.observe(now - req.arrived)
        else:
            self.metrics.itl.observe(now - req.last_token_at)
        req.last_token_at = now
        self.metrics.tokens_generated.inc()
        index = req.resumed + len(seq.output_ids) - 1
        text = req.detokenizer.step(seq.output_ids, final=seq.is_finished)
        event = TokenEvent([token], text, index, seq.finish_reason if seq.is_finished else None)
        if seq.is_finished:
            self._live.pop(seq.seq_id, None)
        self._post(req, event)

    def _post(self, req: _Request, item) -> None:
        """Hand an event to the request's loop; a closed loop means nobody listens: abort, never die."""
        try:
            req.loop.call_soon_threadsafe(req.events.put_nowait, item)
        except RuntimeError:
            if req.seq is not None and not req.seq.is_finished:
                self.engine.abort(req.seq)
            if req.seq is not None:
                self._live.pop(req.seq.seq_id, None)

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
    def _import_cached_prefix(self, req: _Request) -> None:
        if self.kv_pool is None:
            return
        bs = self.kv_pool.block_size
        ids = req.prompt_ids
        matched, blocks = req.cached_prefix
        req.cached_prefix = (0, [])  # imported below: the engine's copy is the one used from now on
        if matched:
            req.seq.kv.import_blocks(blocks, bs)
            req.seq.kv.truncate(min(matched, len(ids) - 1))  # the last prompt token must run to get logits
            self.metrics.prefill_tokens_reused.inc(req.seq.num_cached)
        req.offered_blocks = len(blocks)

    def _offer_new_blocks(self, req: _Request) -> None:
        """Give the pool every full block this sequence completed since the last offer, without waiting:
        the write runs on the pool's thread while the engine steps on (a stalled Redis stalls no batch)."""
        if self.kv_pool is None:
            return
        bs = self.kv_pool.block_size
        seq = req.seq
        full = seq.num_cached // bs
        if full > req.offered_blocks:
            new = seq.kv.export_blocks(bs, full * bs, first_block=req.offered_blocks)
            write = self.kv_pool.insert_in_background(seq.token_ids[:full * bs], [None] * req.offered_blocks + new)
            if write is not None:  # None: the pool's backlog is full; these blocks are offered again next time
                req.pool_writes = [f for f in req.pool_writes if not f.done()] + [write]
                req.offered_blocks = full
