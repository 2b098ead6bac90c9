"""The generation loop: schedule -> run -> sample, with requests joining and leaving between steps."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from eaas.engine.kv_cache import KVSlots
from eaas.engine.model_runner import ModelRunner
from eaas.engine.sampler import sample_next
from eaas.engine.scheduler import ScheduleLimits, schedule
from eaas.engine.sequence import SamplingParams, Sequence, Status
from eaas.model.dense import DenseModel


class RequestError(ValueError):
    """A request the engine refuses (bad ids, too long): the message says why."""


@dataclass
class StepOutput:
    seq: Sequence
    token_id: int
    finished: bool


def split_evenly(n: int, parts: int) -> list[tuple[int, int]]:
    """[lo, hi) ranges cutting n items into at most `parts` non-empty, near-equal runs."""
    parts = max(1, min(parts, n))
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


class LLMEngine:
    def __init__(self, model: DenseModel, limits: ScheduleLimits = ScheduleLimits(), micro_batches: int = 1):
        self.model = model
        self.runner = ModelRunner(model)
        self.limits = limits
        # micro_batches > 1: split each step into disjoint sub-batches run in parallel threads, so one
        # computes attention while another waits on remote experts (MegaScale-Infer's ping-pong).
        self.micro_batches = max(1, micro_batches)
        self._pool = ThreadPoolExecutor(self.micro_batches, "eaas-mb") if self.micro_batches > 1 else None
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.eos_ids = model.eos_token_ids
        self.num_layers = model.config.num_hidden_layers
        self.kv_slots = KVSlots(self.num_layers, initial_slots=min(limits.max_num_seqs, 64))
        self._finished_kv: list = []  # released at the next step, so callers can still export them

    # --- requests -------------------------------------------------------------------------------
    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        try:
            params.validate()
        except ValueError as exc:
            raise RequestError(str(exc)) from None
        if not prompt_ids:
            raise RequestError("prompt is empty")
        vocab = self.model.vocab_size
        bad = [t for t in prompt_ids if not 0 <= int(t) < vocab]
        if bad:
            raise RequestError(f"prompt token id {bad[0]} is outside the vocabulary (0..{vocab - 1})")
        limit = self.model.max_positions
        if len(prompt_ids) + params.max_tokens > limit:
            raise RequestError(f"prompt ({len(prompt_ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                               f"the model's context of {limit} tokens")

    def add_request(self, prompt_ids: list[int], params: SamplingParams, request_id: str = "") -> Sequence:
        self.check_request(prompt_ids, params)
        seq = Sequence([int(t) for t in prompt_ids], params, self.kv_slots, request_id=request_id)
        self.waiting.append(seq)
        return seq

    def abort(self, seq: Sequence) -> None:
        if seq in self.waiting:
            self.waiting.remove(seq)
        if seq in self.running:
            self.running.remove(seq)
        self._finish(seq, "abort")

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # --- one step -------------------------------------------------------------------------------
    def step(self) -> list[StepOutput]:
        for kv in self._finished_kv:
            kv.release()
        self._finished_kv.clear()
        waiting = list(self.waiting)
        picked, admitted = schedule([s.num_uncached for s in self.running],
                                    [s.num_uncached for s in waiting], self.limits)
        for _ in range(admitted):
            seq = self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
        if not picked:
            return []
        candidates = self.running  # running first, then the ones just admitted, in the same order
        batch = [candidates[p.index] for p in picked]
        counts = [p.tokens for p in picked]
        logits = self._forward(batch, counts)
        greedy = logits.argmax(-1).tolist()  # one op for every greedy sequence
        outputs = []
        for i, seq in enumerate(batch):
            if seq.num_uncached > 0:  # mid-prompt chunk: nothing to sample yet
                continue
            p = seq.params
            token = greedy[i] if p.temperature <= 0 else sample_next(logits[i], p.temperature, p.top_p, seq.next_generator())
            seq.output_ids.append(token)
            reason = self._stop_reason(seq, token)
            if reason:
                self.running.remove(seq)
                self._finish(seq, reason)
            outputs.append(StepOutput(seq, token, reason is not None))
        return outputs

    def _forward(self, batch: list[Sequence], counts: list[int]) -> torch.Tensor:
        """Last-token logits [B, V] of the batch, in micro-batches when configured."""
        self.kv_slots.reserve(max(s.num_cached + n for s, n in zip(batch, counts)))  # grow before threads
        parts = split_evenly(len(batch), self.micro_batches)
        jobs = [(batch[lo:hi], counts[lo:hi]) for lo, hi in parts]
        if len(jobs) == 1:
            return self._forward_one(*jobs[0])
        return torch.cat(list(self._pool.map(lambda job: self._forward_one(*job), jobs)))

    def _forward_one(self, batch: list[Sequence], counts: list[int]) -> torch.Tensor:
        input_ids: list[int] = []
        for seq, n in zip(batch, counts):
            start = seq.num_cached
            input_ids.extend(seq.token_ids[start:start + n])
        return self.runner.forward(input_ids, [s.kv for s in batch], counts)

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
        self._finished_kv.append(seq.kv)

    # --- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion together (continuous batching); returns generated ids per prompt."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        while self.has_unfinished():
            self.step()
        return [s.output_ids for s in seqs]
