"""What a request asks the sampler for, and the ranges the engine accepts (no torch: clients check with it)."""

from __future__ import annotations

import math
from dataclasses import dataclass

MAX_LOGPROBS = 20  # top alternatives per token a request may ask for (vLLM's default max_logprobs)


class InvalidParam(ValueError):
    """A sampling parameter out of its range; `param` names it (the OpenAI error's `param`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0          # 0 = greedy
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    # Index, within the whole completion, of the first token this request samples: a stream resumed after
    # k tokens (on another gateway) sets k, so that a seeded sample continues with the same draws.
    first_token_index: int = 0
    # vLLM's semantics: repetition over prompt + output (1 = off), presence/frequency over the output (0 = off)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_tokens: int = 0               # EOS and stop_token_ids are impossible before this many tokens
    logprobs: int | None = None       # each sampled token's logprob and this many top alternatives
    prompt_logprobs: int | None = None  # the same for every prompt token (the prompt then skips the prefix cache)

    def validate(self) -> None:
        if self.max_tokens < 1:
            raise InvalidParam(f"max_tokens must be >= 1, got {self.max_tokens}", "max_tokens")
        if not self.temperature >= 0 or self.temperature == float("inf"):  # NaN fails >= and would reach the sampler
            raise InvalidParam(f"temperature must be a finite number >= 0, got {self.temperature}", "temperature")
        if not 0 < self.top_p <= 1:
            raise InvalidParam(f"top_p must be in (0, 1], got {self.top_p}", "top_p")
        if self.first_token_index < 0:
            raise InvalidParam(f"first_token_index must be >= 0, got {self.first_token_index}", "first_token_index")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:  # NaN fails too
                raise InvalidParam(f"{name} must be in [-2, 2], got {getattr(self, name)}", name)
        if not (0 < self.repetition_penalty and math.isfinite(self.repetition_penalty)):
            raise InvalidParam(f"repetition_penalty must be a finite number > 0, got {self.repetition_penalty}",
                               "repetition_penalty")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise InvalidParam(f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}",
                               "min_tokens")
        for name in ("logprobs", "prompt_logprobs"):
            k = getattr(self, name)
            if k is not None and not 0 <= k <= MAX_LOGPROBS:
                raise InvalidParam(f"{name} must be in [0, {MAX_LOGPROBS}], got {k}", name)

    @property
    def adjusts_logits(self) -> bool:
        """Whether sampling needs more than the raw logits (penalties or min_tokens)."""
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
                    or self.min_tokens)
