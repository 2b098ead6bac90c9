"""Next-token choice per sequence: penalties and min_tokens on the logits, then greedy, or temperature + top-p
with the sequence's own seeded generator."""

from __future__ import annotations

import torch


def sample_next(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    """logits [V] (any float dtype) -> token id."""
    if temperature <= 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(sorted_p, dim=-1) - sorted_p < top_p  # smallest set whose mass reaches top_p
        sorted_p = torch.where(keep, sorted_p, torch.zeros_like(sorted_p))
        choice = torch.multinomial(sorted_p / sorted_p.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def apply_penalties(logits: torch.Tensor, prompt_ids: list[int], output_ids: list[int], repetition: float,
                    frequency: float, presence: float) -> torch.Tensor:
    """vLLM's penalties on logits [V] (a new tensor): repetition_penalty divides a positive logit (multiplies a
    negative one) of every token seen in the prompt or the output (transformers' RepetitionPenaltyLogitsProcessor);
    then OpenAI's formula over the output alone: logit - count * frequency - (count > 0) * presence."""
    out = logits.float().clone()
    vocab = out.shape[-1]
    if repetition != 1.0:
        seen = torch.tensor(sorted(set(prompt_ids) | set(output_ids)), dtype=torch.long)
        picked = out[seen]
        out[seen] = torch.where(picked > 0, picked / repetition, picked * repetition)
    if output_ids and (frequency or presence):
        counts = torch.bincount(torch.tensor(output_ids, dtype=torch.long), minlength=vocab)[:vocab].float()
        out -= counts * frequency + (counts > 0).float() * presence
    return out


def forbid_tokens(logits: torch.Tensor, token_ids: list[int]) -> torch.Tensor:
    """logits with the given ids made impossible (min_tokens: no end before that many tokens)."""
    out = logits.float().clone()
    ids = [t for t in token_ids if 0 <= t < out.shape[-1]]
    if ids:
        out[torch.tensor(ids, dtype=torch.long)] = float("-inf")
    return out
