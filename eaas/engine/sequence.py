"""One request: its tokens, sampling parameters, block table and state."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import Enum

import torch

# re-exported: what a request asks for lives in its own (torch-free) module
from eaas.engine.sampling_params import MAX_LOGPROBS, InvalidParam, SamplingParams  # noqa: F401

_ids = itertools.count()

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
    preempted: bool = False           # waiting again after it ran (its KV freed, to be recomputed)
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
