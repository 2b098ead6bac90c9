"""One request: its tokens, sampling parameters, block table and state."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from enum import Enum

import torch


_ids = itertools.count()
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


_SEED_STRIDE = 0x9E3779B97F4A7C15  # golden-ratio increment: token i's seed = seed + i * stride (mod 2^63)


def token_seed(seed: int, index: int) -> int:
    """Seed of the draw for the completion's token `index`: a pure function, so a resumed stream
    (on any gateway, any batch) draws what the uninterrupted one would have drawn."""
    return (seed + index * _SEED_STRIDE) % (1 << 63)


class Status(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    request_id: str = ""
    seq_id: int = field(default_factory=lambda: next(_ids))
    output_ids: list[int] = field(default_factory=list)
    status: Status = Status.WAITING
    finish_reason: str | None = None  # "stop" | "length" | "abort"
    block_table: list[int] = field(default_factory=list)  # KV blocks, in token order (empty while waiting)
    num_cached: int = 0               # leading tokens whose KV is in those blocks
    block_names: list[bytes] = field(default_factory=list)  # chain hashes of its full blocks, computed so far
    pending_import: list = field(default_factory=list)      # MemPool blocks, written in on admission
    imported_tokens: int = 0          # prompt tokens whose KV came from the MemPool
    exported_blocks: int = 0          # MemPool-sized blocks already handed out in step outputs (or imported)
    prompt_logprobs: list = field(default_factory=list)  # [None, TokenLogprobs...] per prompt token, when asked
    generator: torch.Generator | None = field(init=False, default=None)
    seed: int | None = field(init=False, default=None)

    def __post_init__(self):
        if self.params.prompt_logprobs is not None:
            self.prompt_logprobs = [None]  # nothing predicts the first prompt token
        if self.params.temperature > 0:
            self.generator = torch.Generator()
            self.seed = self.params.seed if self.params.seed is not None else torch.seed()

    def next_generator(self) -> torch.Generator:
        """The generator for the token about to be sampled, seeded from (seed, its index in the completion)."""
        self.generator.manual_seed(token_seed(self.seed, self.params.first_token_index + len(self.output_ids)))
        return self.generator

    @property
    def token_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def num_uncached(self) -> int:
        """Tokens still to be fed through the model (prompt remainder, or the last sampled token)."""
        return self.num_tokens - self.num_cached

    @property
    def scoring_prompt(self) -> bool:
        """Its prompt's logprobs are still to be computed (so its prompt must run through the model)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < len(self.prompt_ids)

    @property
    def is_finished(self) -> bool:
        return self.status == Status.FINISHED
