"""Log-probabilities of chosen and top tokens from raw model logits (before penalties and temperature, as
vLLM's default `raw_logprobs`), for sampled tokens and for the prompt's own tokens (echo)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TokenLogprobs:
    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...] = ()  # the k most likely (id, logprob), most likely first


def token_logprobs(logits: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    """logits [V] -> the log-probability of token_id and the k most likely tokens."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return _entry(logp, token_id, k)


def prompt_token_logprobs(logits: torch.Tensor, next_ids: list[int], k: int) -> list[TokenLogprobs]:
    """logits [N, V] at N consecutive positions -> the entry of the token that follows each (next_ids[i])."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return [_entry(logp[i], t, k) for i, t in enumerate(next_ids)]


def _entry(logp: torch.Tensor, token_id: int, k: int) -> TokenLogprobs:
    top = ()
    if k > 0:
        values, ids = torch.topk(logp, min(k, logp.shape[-1]))
        top = tuple(zip(ids.tolist(), values.tolist()))
    return TokenLogprobs(token_id, float(logp[token_id]), top)


def prompt_rows(cached: int, new: int, prompt_len: int, recorded: int) -> range:
    """Which of a chunk's rows score a prompt token not yet scored. The chunk feeds positions
    [cached, cached + new); the logits at position p predict token p + 1; `recorded` prompt tokens
    (the first, which nothing predicts, included) already have their entry (a preempted sequence recomputes)."""
    return range(max(0, recorded - 1 - cached), max(0, min(new, prompt_len - 1 - cached)))
