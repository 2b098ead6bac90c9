"""Session resume at the service: a stream continued from the tokens a client already has (what another
gateway does after the first one died) gives the tokens the uninterrupted stream would have given."""

from __future__ import annotations

from dataclasses import replace

import pytest

from eaas.engine.sequence import SamplingParams

pytestmark = pytest.mark.asyncio

PROMPT = [5, 77, 130, 42, 9, 201, 18]


async def tokens(service, params: SamplingParams, resume: list[int] | None = None) -> list[int]:
    return [t async for event in service.generate(PROMPT, params, resume_ids=resume) for t in event.token_ids]


async def test_a_seeded_sampled_stream_resumed_mid_way_draws_the_same_tokens(service):
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.95, seed=1234, ignore_eos=True)
    whole = await tokens(service, params)
    assert len(whole) == 20
    for k in (1, 7, 19):
        assert whole[:k] + await tokens(service, params, resume=whole[:k]) == whole, f"resumed after {k} tokens"
    assert await tokens(service, replace(params, seed=1235)) != whole  # the draws do depend on the seed


async def test_a_greedy_stream_resumed_mid_way_gives_the_same_tokens(service):
    params = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    whole = await tokens(service, params)
    assert whole[:5] + await tokens(service, params, resume=whole[:5]) == whole


async def test_a_penalised_stream_resumed_mid_way_counts_the_tokens_it_already_sent(service):
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True, presence_penalty=0.5,
                            frequency_penalty=0.5, min_tokens=10, stop_token_ids=(5,))
    whole = await tokens(service, params)
    for k in (3, 11):
        assert whole[:k] + await tokens(service, params, resume=whole[:k]) == whole, f"resumed after {k} tokens"
    assert await tokens(service, replace(params, presence_penalty=0.0, frequency_penalty=0.0)) != whole
