"""Penalties, min_tokens, stop strings and usage through the official `openai` client, against reference
computations: transformers' RepetitionPenaltyLogitsProcessor and OpenAI's presence/frequency formula."""

from __future__ import annotations

import grpc
import openai
import pytest
import torch
from gateway_grpc import grpc_gateway

from eaas.protos import gateway_pb2, gateway_pb2_grpc

pytestmark = pytest.mark.asyncio
PROMPT_IDS = [72, 101, 108, 108, 111, 44, 32]


def hf_greedy(hf_model, prompt: list[int], steps: int, adjust) -> list[int]:
    """Greedy decoding by transformers with adjust(ids, output_ids, logits[V]) -> logits applied each step."""
    ids, out = list(prompt), []
    with torch.no_grad():
        for _ in range(steps):
            logits = hf_model(torch.tensor([ids])).logits[0, -1].float()
            token = int(adjust(ids, out, logits).argmax())
            ids.append(token)
            out.append(token)
    return out


def repetition(penalty: float):
    from transformers import RepetitionPenaltyLogitsProcessor

    processor = RepetitionPenaltyLogitsProcessor(penalty)
    return lambda ids, out, logits: processor(torch.tensor([ids]), logits[None].clone())[0]


def presence_frequency(presence: float, frequency: float):
    def adjust(ids, out, logits):  # OpenAI: mu[j] - c[j] * frequency - (c[j] > 0) * presence, over the output
        counts = torch.bincount(torch.tensor(out, dtype=torch.long), minlength=logits.shape[0]).float()
        return logits - counts * frequency - (counts > 0).float() * presence
    return adjust


async def greedy_ids(openai_client, **extra) -> list[int]:
    done = await openai_client.completions.create(model="tiny-mixtral", prompt=PROMPT_IDS, max_tokens=12,
                                                  temperature=0, extra_body={"ignore_eos": True, **extra.pop("body", {})},
                                                  **extra)
    return done.choices[0].model_extra["token_ids"]


@pytest.mark.parametrize("case", ["repetition", "presence_frequency"])
async def test_penalised_greedy_equals_the_reference_computation(openai_client, hf_model, case):
    if case == "repetition":
        got = await greedy_ids(openai_client, body={"repetition_penalty": 1.5})
        expected = hf_greedy(hf_model, PROMPT_IDS, 12, repetition(1.5))
    else:
        got = await greedy_ids(openai_client, presence_penalty=0.4, frequency_penalty=0.3)
        expected = hf_greedy(hf_model, PROMPT_IDS, 12, presence_frequency(0.4, 0.3))
    plain = hf_greedy(hf_model, PROMPT_IDS, 12, lambda ids, out, logits: logits)
    assert got == expected
    assert expected != plain  # the penalty changed the tokens, so the comparison tells something


async def test_min_tokens_keeps_eos_and_stop_ids_away(openai_client):
    # seeded sampling of this prompt draws EOS (257) as its fifth token
    request = dict(model="tiny-mixtral", prompt="Hello, ", max_tokens=12, seed=3)
    plain = await openai_client.completions.create(**request)
    assert plain.choices[0].model_extra["token_ids"][-1] == 257 and plain.choices[0].finish_reason == "stop"
    held = await openai_client.completions.create(**request, extra_body={"min_tokens": 8, "stop_token_ids": [140]})
    ids = held.choices[0].model_extra["token_ids"]
    assert len(ids) >= 8 and not {257, 140} & set(ids[:8])
    assert plain.choices[0].model_extra["token_ids"][1] == 140  # the stop id would have ended it at once


async def test_a_stop_string_across_tokens_is_never_streamed(openai_client):
    # seeded sampling gives "k]\x18`\x04&..." one byte token at a time; the stop string spans three tokens
    request = dict(model="tiny-mixtral", prompt="Hello, ", max_tokens=20, seed=2, stop=["]\x18`"],
                   extra_body={"ignore_eos": True})
    done = await openai_client.completions.create(**request)
    assert (done.choices[0].text, done.choices[0].finish_reason) == ("k", "stop")
    assert done.choices[0].model_extra["token_ids"] == [107, 93, 24, 96]

    stream = await openai_client.completions.create(**request, stream=True, stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == "k" and chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4


async def test_stop_strings_apply_only_after_min_tokens(openai_client):
    request = dict(model="tiny-mixtral", prompt="Hello, ", max_tokens=6, seed=2, stop=["]"],
                   extra_body={"ignore_eos": True, "min_tokens": 3})
    done = await openai_client.completions.create(**request)
    assert done.choices[0].text == "k]\x18`\x04&" and done.choices[0].finish_reason == "length"


@pytest.mark.parametrize("kwargs,param", [
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"frequency_penalty": -3}, "frequency_penalty"),
    ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
    ({"n": 129}, "n"),
    ({"n": 2, "best_of": 3}, "best_of"),
    ({"logprobs": 21}, "logprobs"),
    ({"max_tokens": 4, "extra_body": {"min_tokens": 5}}, "min_tokens"),
])
async def test_bad_values_are_400_in_openai_error_shape(openai_client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        await openai_client.completions.create(model="tiny-mixtral", prompt="a", **kwargs)
    assert info.value.status_code == 400
    assert (info.value.type, info.value.param) == ("invalid_request_error", param)


@pytest.mark.parametrize("kwargs,param", [
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"presence_penalty": -2.5}, "presence_penalty"),
])
async def test_bad_chat_values_are_400_in_openai_error_shape(openai_client, kwargs, param):
    with pytest.raises(openai.BadRequestError) as info:
        await openai_client.chat.completions.create(model="tiny-mixtral", messages=[{"role": "user", "content": "a"}],
                                                    max_tokens=2, **kwargs)
    assert (info.value.status_code, info.value.param) == (400, param)


async def test_grpc_generate_takes_the_same_penalties_and_returns_the_same_logprobs(openai_client, service):
    done = await openai_client.completions.create(model="tiny-mixtral", prompt=PROMPT_IDS, max_tokens=6, temperature=0,
                                                  logprobs=2, presence_penalty=0.4,
                                                  extra_body={"ignore_eos": True, "repetition_penalty": 1.5})
    async with grpc_gateway(service) as address, grpc.aio.insecure_channel(address) as channel:
        request = gateway_pb2.GenerateRequest(prompt_ids=PROMPT_IDS, max_tokens=6, ignore_eos=True, logprobs=2,
                                              presence_penalty=0.4, repetition_penalty=1.5)
        replies = [r async for r in gateway_pb2_grpc.GatewayStub(channel).Generate(request)]
    assert [t for r in replies for t in r.token_ids] == done.choices[0].model_extra["token_ids"]
    assert [lp.logprob for r in replies for lp in r.logprobs] == pytest.approx(done.choices[0].logprobs.token_logprobs,
                                                                              abs=1e-5)
    assert all(len(lp.top_ids) == 2 for r in replies for lp in r.logprobs)
