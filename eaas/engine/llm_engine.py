"""The generation loop: schedule -> run -> sample, with requests joining and leaving between steps.

The engine owns its memory: KV lives in blocks preallocated from a byte budget (kv_budget.py); a
request holds blocks only while it runs (queued ones hold none); when decoding runs out of blocks the
newest running request is preempted and later recomputed, which changes none of its tokens.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from itertools import islice

import torch

from eaas.engine.block_manager import BlockManager, blocks_for, chain_hashes
from eaas.engine.kv_budget import default_kv_cache_bytes, num_blocks_in_budget
from eaas.engine.kv_cache import KVCache, bytes_per_block, probe_layer_shapes
from eaas.engine.kv_mirror import KVMirror
from eaas.engine.logprobs import TokenLogprobs, prompt_rows, prompt_token_logprobs, token_logprobs
from eaas.engine.micro_batch_turns import run_in_turns
from eaas.engine.model_runner import ModelRunner
from eaas.engine.sampler import apply_penalties, forbid_tokens, sample_next
from eaas.engine.scheduler import Demand, ScheduleLimits, schedule
from eaas.engine.sequence import SamplingParams, Sequence, Status
from eaas.model.dense import DenseModel
from eaas.rpc.micro_batches import micro_batch_count

Block = list[torch.Tensor]  # one MemPool block: [k0, v0, k1, v1, ...], each [heads, tokens, dim]


class RequestError(ValueError):
    """A request the engine refuses (bad ids, too long): the message says why, `param` which field if known."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass
class StepOutput:
    seq: Sequence
    token_id: int
    new_blocks: list[Block] = field(default_factory=list)  # MemPool blocks completed since its last output
    first_block: int = 0                                    # index of new_blocks[0] among its blocks
    logprobs: TokenLogprobs | None = None                   # when the request asked for logprobs
    prompt_logprobs: list | None = None                     # on its first output, when it asked for them


class RequestHandle:
    """What add_request returns: the sequence, and finish() to end it now (from any thread)."""

    def __init__(self, engine: "LLMEngine", seq: Sequence):
        self.engine = engine
        self.seq = seq

    @property
    def output_ids(self) -> list[int]:
        """The tokens generated so far (all of them once the request has finished)."""
        return self.seq.output_ids

    @property
    def finish_reason(self) -> str | None:
        return self.seq.finish_reason

    def finish(self) -> None:
        """End the request at the engine's next step, freeing its KV; the tokens not yet made never are."""
        self.engine._finish_requests.append(self.seq)  # deque.append: safe from another thread


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting n items into at most `parts` non-empty, near-equal runs."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


class LLMEngine:
    def __init__(self, model: DenseModel, limits: ScheduleLimits = ScheduleLimits(), micro_batches: int = 1,
                 kv_cache_bytes: int | None = None, block_size: int = 16, micro_batch_min_tokens: int = 1):
        self.model = model
        self.limits = limits
        shapes = probe_layer_shapes(model.hf)
        budget = default_kv_cache_bytes() if kv_cache_bytes is None else kv_cache_bytes
        num_blocks = num_blocks_in_budget(budget, bytes_per_block(shapes, block_size), block_size,
                                          limits.max_num_seqs, model.max_positions)
        self.kv = KVCache(shapes, num_blocks, block_size)
        self.blocks = BlockManager(num_blocks, block_size)
        self.block_size = block_size
        # attention reads running sequences from a dense copy instead of gathering blocks (kv_mirror.py);
        # None: it gathers them
        self.mirror: KVMirror | None = KVMirror(shapes, limits.max_num_seqs, model.max_positions,
                                                max_bytes=self.kv.nbytes)
        self.runner = ModelRunner(model, self.kv)
        # micro_batches > 1: split each step into disjoint sub-batches that take turns on this thread, so one
        # computes attention while another waits on remote experts (micro_batch_turns.py); a step is split only
        # while each micro-batch gets at least micro_batch_min_tokens tokens (eaas/rpc/micro_batches.py)
        self.micro_batches = max(1, micro_batches)
        self.micro_batch_min_tokens = micro_batch_min_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.eos_ids = model.eos_token_ids
        self.num_layers = model.config.num_hidden_layers
        self.export_block_size: int | None = None  # set: step outputs carry completed blocks of this many tokens
        self.num_preemptions = 0
        self.num_started = 0            # requests that left the queue to run for the first time
        self.num_preempted_waiting = 0  # of self.waiting, those that ran before (see queued_new)
        self._finish_requests: deque[Sequence] = deque()

    # --- requests -------------------------------------------------------------------------------
    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            params.validate()
        except ValueError as exc:
            raise RequestError(str(exc), getattr(exc, "param", None)) from None
        if not prompt_ids:
            raise RequestError("prompt is empty")
        self.check_token_ids(prompt_ids)
        limit = self.model.max_positions
        total = len(prompt_ids) + params.max_tokens
        if total > limit:
            raise RequestError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                               f"the model's context of {limit} tokens")
        if blocks_for(total, self.block_size) > self.blocks.num_blocks:
            raise RequestError(f"prompt + max_tokens ({total} tokens) exceeds the KV cache of "
                               f"{self.blocks.num_blocks * self.block_size} tokens (--kv-cache-bytes)")

    def check_token_ids(self, ids: list[int], what: str = "prompt") -> None:
        vocab = self.model.vocab_size
        bad = [t for t in ids if not 0 <= int(t) < vocab]
        if bad:
            raise RequestError(f"{what} token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")

    def add_request(self, prompt_ids: list[int], params: SamplingParams, cached_blocks: list[Block] | None = None,
                    request_id: str = "") -> RequestHandle:
        """Queue a request. cached_blocks: MemPool blocks of the prompt's first tokens (export_block_size
        tokens each), written into the cache when the request starts running."""
        self.check_request(prompt_ids, params)
        seq = Sequence([int(t) for t in prompt_ids], params, request_id=request_id)
        if cached_blocks and not seq.scoring_prompt:
            seq.pending_import = list(cached_blocks)
            seq.exported_blocks = len(cached_blocks)  # the pool has them already
        self.waiting.append(seq)
        return RequestHandle(self, seq)

    def abort(self, seq: Sequence) -> None:
        """End a sequence now (on the engine's thread; from elsewhere use its handle's finish())."""
        if seq.is_finished:
            return
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self._leave_queue(seq, to_run=False)
        self._finish(seq, "abort")

    @property
    def queued_new(self) -> int:
        """Waiting requests that never ran (readable from any thread). Preempted ones wait at the head of
        the queue but are not counted: they were admitted once, and a bound on arrivals must not refuse
        new requests because running ones were preempted."""
        return len(self.waiting) - self.num_preempted_waiting

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running or self._finish_requests)

    # --- one step -------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        while self._finish_requests:
            self.abort(self._finish_requests.popleft())
        running = list(self.running)
        waiting = list(islice(self.waiting, self.limits.max_num_seqs))  # no step admits more than these
        plan = schedule([self._running_demand(s) for s in running], [self._waiting_demand(s) for s in waiting],
                        self.blocks.num_free, self.block_size, self.limits)
        for i in plan.preempted:  # newest first, so the oldest ends at the head of the queue
            self._preempt(running[i])
        batch, counts = [], []
        for p in plan.scheduled:
            if p.index < len(running):
                seq = running[p.index]
                self.blocks.grow(seq.block_table, seq.num_cached + p.tokens)
                batch.append(seq)
                counts.append(p.tokens)
            elif (take := self._admit(waiting[p.index - len(running)], p.tokens)) is not None:
                batch.append(self.running[-1])
                counts.append(take)
            else:
                break  # the queue keeps its order: nobody overtakes a request that did not fit
        if not batch:
            return []
        logits = self._forward(batch, counts)
        greedy = logits.argmax(-1).tolist()  # one op for every greedy sequence
        outputs = []
        for i, (seq, n) in enumerate(zip(batch, counts)):
            self._cached_more(seq, n)
            if seq.num_uncached > 0:  # mid-prompt chunk: nothing to sample yet
                continue
            token = self._sample(seq, logits[i], greedy[i])
            seq.output_ids.append(token)
            outputs.append(self._output(seq, token, logits[i]))
            reason = self._stop_reason(seq, token)
            if reason:
                self.running.remove(seq)
                self._finish(seq, reason)
        return outputs

    def _sample(self, seq: Sequence, logits: torch.Tensor, greedy: int) -> int:
        p = seq.params
        if p.adjusts_logits:
            # a resumed stream's earlier tokens end its prompt: they count as output, as in the uninterrupted one
            resumed = seq.prompt_ids[len(seq.prompt_ids) - p.first_token_index:] if p.first_token_index else []
            logits = apply_penalties(logits, seq.prompt_ids, resumed + seq.output_ids, p.repetition_penalty,
                                     p.frequency_penalty, p.presence_penalty)
            if len(seq.output_ids) < p.min_tokens:
                logits = forbid_tokens(logits, [*p.stop_token_ids, *([] if p.ignore_eos else self.eos_ids)])
            greedy = int(torch.argmax(logits))
        return greedy if p.temperature <= 0 else sample_next(logits, p.temperature, p.top_p, seq.next_generator())

    def _running_demand(self, seq: Sequence) -> Demand:
        table = seq.block_table
        return Demand(seq.num_cached, seq.num_uncached, len(table), self.blocks.exclusive(table))

    def _waiting_demand(self, seq: Sequence) -> Demand:
        names = self._names(seq, self._reusable_blocks(seq))
        cached = max(len(self.blocks.cached_prefix(names)) * self.block_size, self._import_tokens(seq))
        return Demand(cached, seq.num_tokens - cached, self.blocks.shared_hits(names))

    def _reusable_blocks(self, seq: Sequence) -> int:
        """Full blocks it may take from the prefix cache: not its last token's (that one always runs), and
        none while its prompt's logprobs are to be computed (they need the prompt's logits)."""
        return 0 if seq.scoring_prompt else (seq.num_tokens - 1) // self.block_size

    def _names(self, seq: Sequence, n: int) -> list[bytes]:
        """Chain hashes of the sequence's first n full blocks (memoised on the sequence)."""
        have, bs = len(seq.block_names), self.block_size
        if n > have:
            start = seq.block_names[-1] if have else b""
            seq.block_names += chain_hashes(seq.token_ids[have * bs:n * bs], bs, start)
        return seq.block_names[:n]

    def _import_tokens(self, seq: Sequence) -> int:
        return min(sum(b[0].shape[1] for b in seq.pending_import), seq.num_tokens - 1)

    def _admit(self, seq: Sequence, planned: int) -> int | None:
        """Start running a waiting sequence: shared cached blocks, then MemPool blocks, then fresh ones.
        Returns how many tokens it feeds now, or None when its blocks do not fit after all."""
        table = self.blocks.take_cached(self._names(seq, self._reusable_blocks(seq)))
        seq.block_table, seq.num_cached = table, len(table) * self.block_size
        take = min(planned, seq.num_tokens - max(seq.num_cached, self._import_tokens(seq)))
        end = max(seq.num_cached, self._import_tokens(seq)) + take
        if blocks_for(end, self.block_size) - len(table) > self.blocks.num_free:
            self.blocks.release(table)  # a cached block it counted on went to someone earlier this step
            seq.num_cached = 0
            return None
        self.blocks.grow(table, end)
        self._write_import(seq)
        self._leave_queue(seq, to_run=True)
        seq.status = Status.RUNNING
        self.running.append(seq)
        return end - seq.num_cached

    def _write_import(self, seq: Sequence) -> None:
        """Write the MemPool blocks past what the engine's own cache already had."""
        upto, lo = self._import_tokens(seq), 0
        for block in seq.pending_import:
            n = block[0].shape[1]
            a, b = max(lo, seq.num_cached), min(lo + n, upto)
            if a < b:
                self.kv.import_tokens(seq.block_table, a, [t[:, a - lo:b - lo] for t in block])
            lo += n
        if upto > seq.num_cached:
            seq.imported_tokens = upto - seq.num_cached
            seq.num_cached = upto
        seq.pending_import = []

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._forget_mirror(seq)
        self.blocks.release(seq.block_table)
        seq.num_cached = 0
        seq.status = Status.WAITING
        seq.preempted = True
        self.num_preempted_waiting += 1
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _leave_queue(self, seq: Sequence, to_run: bool) -> None:
        # removed before the count drops: a reader on another thread may count one too few, never too many
        self.waiting.remove(seq)
        if seq.preempted:
            seq.preempted = False
            self.num_preempted_waiting -= 1
        elif to_run:
            self.num_started += 1

    def _cached_more(self, seq: Sequence, n: int) -> None:
        """After the forward: n more tokens cached; name the blocks that became full (prefix sharing)."""
        before = seq.num_cached // self.block_size
        seq.num_cached += n
        full = seq.num_cached // self.block_size
        if full > before:
            names = self._names(seq, full)
            for b in range(before, full):
                self.blocks.name(seq.block_table[b], names[b])

    def _output(self, seq: Sequence, token: int, logits: torch.Tensor) -> StepOutput:
        out = StepOutput(seq, token)
        p = seq.params
        if p.logprobs is not None:
            out.logprobs = token_logprobs(logits, token, p.logprobs)
        if p.prompt_logprobs is not None and len(seq.output_ids) == 1:
            out.prompt_logprobs = seq.prompt_logprobs
        ebs = self.export_block_size
        if ebs:
            first, full = seq.exported_blocks, seq.num_cached // ebs
            out.new_blocks = [self.kv.export_tokens(seq.block_table, b * ebs, (b + 1) * ebs) for b in range(first, full)]
            out.first_block = first
            seq.exported_blocks = max(first, full)
        return out

    def _forward(self, batch: list[Sequence], counts: list[int]) -> torch.Tensor:
        """Last-token logits [B, V] of the batch, in micro-batches when configured."""
        staged = None
        if self.mirror is not None:  # here, before the micro-batch threads: staging may grow the mirror
            staged = self.mirror.stage(self.kv, [s.seq_id for s in batch], [s.block_table for s in batch],
                                       [s.num_cached for s in batch], counts)
        mirror = self.mirror if staged is not None else None  # None: over the mirror's cap, gather blocks
        slots = staged if staged is not None else [None] * len(batch)
        parts = split_evenly(len(batch), micro_batch_count(sum(counts), self.micro_batches,
                                                           self.micro_batch_min_tokens))
        jobs = [(batch[lo:hi], counts[lo:hi], slots[lo:hi], mirror) for lo, hi in parts]
        if len(jobs) == 1:
            return self._forward_one(*jobs[0])
        # inference mode entered once here: each turn's own enter/exit then only restores "on", whatever the
        # order in which the micro-batches finish (the mode is per thread, and they share the thread)
        with torch.inference_mode():
            return torch.cat(run_in_turns([lambda job=job: self._forward_one(*job) for job in jobs]))

    def _forward_one(self, batch: list[Sequence], counts: list[int], slots: list, mirror) -> torch.Tensor:
        input_ids: list[int] = []
        for seq, n in zip(batch, counts):
            input_ids.extend(seq.token_ids[seq.num_cached:seq.num_cached + n])
        scored = [prompt_rows(s.num_cached, n, len(s.prompt_ids), len(s.prompt_logprobs)) if s.scoring_prompt
                  else range(0) for s, n in zip(batch, counts)]
        if not any(scored):
            return self.runner.forward(input_ids, [s.block_table for s in batch], [s.num_cached for s in batch], counts,
                                       mirror=mirror, slots=slots if mirror is not None else None)
        return self._forward_scoring_prompts(batch, counts, slots, mirror, input_ids, scored)

    def _forward_scoring_prompts(self, batch: list[Sequence], counts: list[int], slots: list, mirror,
                                 input_ids: list[int], scored: list[range]) -> torch.Tensor:
        """A forward that also returns the logits of the prompt rows in `scored` (chunk-local per sequence),
        turned into prompt logprobs on the sequences; returns the last-token logits [B, V] as usual."""
        rows, last, offset = [], [], 0
        for n, chunk_rows in zip(counts, scored):
            rows.extend(offset + j for j in chunk_rows)
            last.append(len(rows))
            rows.append(offset + n - 1)
            offset += n
        logits = self.runner.forward(input_ids, [s.block_table for s in batch], [s.num_cached for s in batch], counts,
                                     rows=torch.tensor(rows, dtype=torch.long), mirror=mirror,
                                     slots=slots if mirror is not None else None)
        for seq, chunk_rows, end in zip(batch, scored, last):
            if chunk_rows:
                nxt = [seq.prompt_ids[seq.num_cached + j + 1] for j in chunk_rows]
                seq.prompt_logprobs += prompt_token_logprobs(logits[end - len(chunk_rows):end], nxt,
                                                             seq.params.prompt_logprobs)
        return logits[torch.tensor(last, dtype=torch.long)]

    def _forget_mirror(self, seq: Sequence) -> None:
        if self.mirror is not None:
            self.mirror.forget(seq.seq_id)

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids):
            return "stop"
        if len(seq.output_ids) >= p.max_tokens:
            return "length"
        return None

    def _finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.blocks.release(seq.block_table)
        self._forget_mirror(seq)
        seq.pending_import = []

    # --- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion together (continuous batching); returns generated ids per prompt."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [self.add_request(p, sp).seq for p, sp in zip(prompts, plist)]
        while self.has_unfinished():
            self.step()
        return [s.output_ids for s in seqs]
