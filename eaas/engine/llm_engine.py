"""The generation loop: schedule -> run -> sample, with requests joining and leaving between steps."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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


class LLMEngine:
    def __init__(self, model: DenseModel, limits: ScheduleLimits = ScheduleLimits()):
        self.model = model
        self.runner = ModelRunner(model)
        self.limits = limits
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.eos_ids = model.eos_token_ids
        self.num_layers = model.config.num_hidden_layers

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
        seq = Sequence([int(t) for t in prompt_ids], params, self.num_layers, request_id=request_id)
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
        input_ids: list[int] = []
        for seq, n in zip(batch, counts):
            start = seq.num_cached
            input_ids.extend(seq.token_ids[start:start + n])
        logits = self.runner.forward(input_ids, [s.kv for s in batch], counts)
        outputs = []
        for i, seq in enumerate(batch):
            if seq.num_uncached > 0:  # mid-prompt chunk: nothing to sample yet
                continue
            token = sample_next(logits[i], seq.params.temperature, seq.params.top_p, seq.generator)
            seq.output_ids.append(token)
            reason = self._stop_reason(seq, token)
            if reason:
                self.running.remove(seq)
                self._finish(seq, reason)
            outputs.append(StepOutput(seq, token, reason is not None))
        return outputs

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        p = seq.params
        if token in p.stop_token_ids or (not p.ignore_eos and token in self.eos_ids):
            return "stop"
        if len(seq.output_ids) >= p.max_tokens:
            return "length"
        return None

    @staticmethod
    def _finish(seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason

    # --- convenience ----------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], params: SamplingParams | list[SamplingParams]) -> list[list[int]]:
        """Run prompts to completion together (continuous batching); returns generated ids per prompt."""
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs = [self.add_request(p, sp) for p, sp in zip(prompts, plist)]
        while self.has_unfinished():
            self.step()
        return [s.output_ids for s in seqs]
