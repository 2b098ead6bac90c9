"""Every field of the gRPC GenerateRequest, set through the SDK (`AsyncClient.generate(...)`) against the
gateway's real gRPC server, gives what the same field gives through the OpenAI API (the official `openai`
client against the same engine) — and changes the output, so a field the SDK dropped would fail."""

from __future__ import annotations

import inspect

import grpc
import pytest
from gateway_grpc import grpc_gateway

from eaas.client import AsyncClient, GenerationError
from eaas.client.common import build_request, resumed_request
from eaas.protos import gateway_pb2

pytestmark = pytest.mark.asyncio
PROMPT_IDS = [72, 101, 108, 108, 111, 44, 32]
# fields the SDK sets itself: the prompt (prompt_ids or prompt) and where a resumed stream continues
SET_BY_THE_SDK = {"prompt_ids", "prompt", "resume_token_ids"}

# (SDK keyword arguments, the same request as the openai client sends it); greedy unless a case samples
CASES = {
    "presence_penalty": ({"presence_penalty": 0.4}, {"presence_penalty": 0.4}),
    "frequency_penalty": ({"frequency_penalty": 0.9}, {"frequency_penalty": 0.9}),
    "repetition_penalty": ({"repetition_penalty": 1.5}, {"extra_body": {"repetition_penalty": 1.5}}),
    "sampling": ({"temperature": 0.8, "top_p": 0.9, "seed": 11}, {"temperature": 0.8, "top_p": 0.9, "seed": 11}),
}


def test_build_request_names_every_generate_field():
    fields = {f.name for f in gateway_pb2.GenerateRequest.DESCRIPTOR.fields} - SET_BY_THE_SDK
    assert fields <= set(inspect.signature(build_request).parameters)
    defaults = {name: p.default for name, p in inspect.signature(build_request).parameters.items()}
    # OpenAI's (and vLLM's) defaults where the APIs overlap: each one leaves the output unchanged
    assert (defaults["presence_penalty"], defaults["frequency_penalty"], defaults["repetition_penalty"],
            defaults["min_tokens"], defaults["logprobs"], defaults["temperature"], defaults["top_p"]) == \
        (0.0, 0.0, 1.0, 0, None, 0.0, 1.0)


async def _sdk(address, **kwargs):
    async with AsyncClient([address], timeout=60, api_key="") as client:
        return await client.generate(**kwargs)


async def _openai(openai_client, prompt, **kwargs):
    extra = kwargs.pop("extra_body", {})
    return (await openai_client.completions.create(model="tiny-mixtral", prompt=prompt,
                                                   extra_body={"ignore_eos": True, **extra}, **kwargs)).choices[0]


@pytest.mark.parametrize("case", sorted(CASES))
async def test_each_sampling_field_gives_what_the_openai_api_gives(openai_client, service, case):
    sdk_kwargs, openai_kwargs = CASES[case]
    greedy = {"temperature": 0.0}
    async with grpc_gateway(service) as address:
        plain = await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=12, ignore_eos=True)
        got = await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=12, ignore_eos=True, **sdk_kwargs)
    want = await _openai(openai_client, PROMPT_IDS, max_tokens=12, **{**greedy, **openai_kwargs})
    assert got.token_ids == want.model_extra["token_ids"]
    assert got.text == want.text
    assert got.token_ids != plain.token_ids  # the field reached the engine


async def test_min_tokens_and_stop_token_ids_give_what_the_openai_api_gives(openai_client, service):
    # seeded sampling of "Hello, " draws EOS (257) as its fifth token and 140 as its second
    async with grpc_gateway(service) as address:
        plain = await _sdk(address, prompt="Hello, ", max_tokens=12, temperature=1.0, seed=3)
        stopped = await _sdk(address, prompt="Hello, ", max_tokens=12, temperature=1.0, seed=3, stop_token_ids=[140])
        held = await _sdk(address, prompt="Hello, ", max_tokens=12, temperature=1.0, seed=3, min_tokens=8,
                          stop_token_ids=[140])
    assert plain.token_ids[-1] == 257 and plain.finish_reason == "stop"
    assert stopped.token_ids == plain.token_ids[:2] and stopped.finish_reason == "stop"
    want = (await openai_client.completions.create(model="tiny-mixtral", prompt="Hello, ", max_tokens=12, seed=3,
                                                   extra_body={"min_tokens": 8, "stop_token_ids": [140]})).choices[0]
    assert held.token_ids == want.model_extra["token_ids"] and held.finish_reason == want.finish_reason
    assert len(held.token_ids) >= 8 and not {257, 140} & set(held.token_ids[:8])


async def test_logprobs_give_what_the_openai_api_gives(openai_client, service):
    async with grpc_gateway(service) as address:
        got = await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=6, ignore_eos=True, logprobs=3,
                         presence_penalty=0.4)
        none = await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=6, ignore_eos=True)
    want = await _openai(openai_client, PROMPT_IDS, max_tokens=6, temperature=0, logprobs=3, presence_penalty=0.4)
    assert none.logprobs == []  # asked for nothing, got nothing
    assert got.token_ids == want.model_extra["token_ids"]
    assert [e.token_id for e in got.logprobs] == got.token_ids
    assert [e.logprob for e in got.logprobs] == pytest.approx(want.logprobs.token_logprobs, abs=1e-5)
    for entry, top in zip(got.logprobs, want.logprobs.top_logprobs):
        assert len(entry.top) == 3 and entry.top[0][1] >= entry.top[1][1] >= entry.top[2][1]
        # OpenAI's top_logprobs is keyed by token text: byte tokens that decode alike share one key
        assert max(top.values()) == pytest.approx(entry.top[0][1], abs=1e-5)
        assert all(any(abs(v - lp) < 1e-5 for _, lp in entry.top) for v in top.values())


async def test_stop_strings_give_what_the_openai_api_gives(openai_client, service):
    # seeded sampling gives "k]\x18`\x04&..." one byte token at a time; the stop string spans three tokens
    sampled = dict(prompt="Hello, ", max_tokens=20, temperature=1.0, seed=2, ignore_eos=True)
    async with grpc_gateway(service) as address:
        got = await _sdk(address, stop=["]\x18`"], **sampled)
        chunks = []
        async with AsyncClient([address], timeout=60, api_key="") as client:
            async for chunk in client.generate_stream(stop="]\x18`", **sampled):
                chunks.append(chunk)
        late = await _sdk(address, stop="]", min_tokens=3, **{**sampled, "max_tokens": 6})
        with pytest.raises(GenerationError) as empty:
            await _sdk(address, stop=[""], **sampled)
    want = (await openai_client.completions.create(model="tiny-mixtral", prompt="Hello, ", max_tokens=20, seed=2,
                                                   temperature=1.0, stop=["]\x18`"],
                                                   extra_body={"ignore_eos": True})).choices[0]
    assert (got.text, got.finish_reason, got.token_ids) == (want.text, want.finish_reason, want.model_extra["token_ids"])
    assert (got.text, got.finish_reason) == ("k", "stop")
    assert "".join(c.text for c in chunks) == "k" and chunks[-1].finish_reason == "stop"  # never streamed
    assert (late.text, late.finish_reason) == ("k]\x18`\x04&", "length")  # not before min_tokens
    assert empty.value.code == grpc.StatusCode.INVALID_ARGUMENT


async def _raw_stream(address, request: gateway_pb2.GenerateRequest) -> tuple[list[int], str, str]:
    from eaas.protos import gateway_pb2_grpc

    async with grpc.aio.insecure_channel(address) as channel:
        ids, text, reason = [], [], ""
        async for reply in gateway_pb2_grpc.GatewayStub(channel).Generate(request):
            ids.extend(reply.token_ids)
            text.append(reply.text)
            reason = reply.finish_reason or reason
    return ids, "".join(text), reason


async def test_a_stop_string_straddling_a_resume_still_ends_the_text(service):
    # the stream a failover moves: "k" then "]" came from a first gateway (which held "]" back: it may start
    # the stop string); the second gets them as resume_token_ids and must end the text at "]\x18`" too
    sampled = dict(prompt="Hello, ", max_tokens=20, temperature=1.0, seed=2, ignore_eos=True, stop=["]\x18`"])
    async with grpc_gateway(service) as address:
        whole = await _raw_stream(address, build_request(**sampled))
        assert whole[1:] == ("k", "stop") and len(whole[0]) == 4  # k ] \x18 `
        for k in (1, 2, 3):
            first_ids = whole[0][:k]
            first_text = "k"  # the first gateway sent the text of "k" and held back any of "]\x18"
            ids, text, reason = await _raw_stream(address, resumed_request(build_request(**sampled), first_ids))
            assert (first_ids + ids, first_text + text, reason) == whole, f"resumed after {k} tokens"
        with pytest.raises(grpc.aio.AioRpcError) as ended:  # that stream had already ended at the stop
            await _raw_stream(address, resumed_request(build_request(**sampled), whole[0]))
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_without_a_tokenizer_stop_strings_are_refused_over_grpc_too(tokenizerless_service):
    async with grpc_gateway(tokenizerless_service) as address:
        with pytest.raises(GenerationError) as refused:
            await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=3, stop="k")
        assert (await _sdk(address, prompt_ids=PROMPT_IDS, max_tokens=3, ignore_eos=True)).token_ids  # still serves
    assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "stop strings need the model's tokenizer" in str(refused.value)
