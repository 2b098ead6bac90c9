"""Logprobs, echo and n through the official `openai` client, against transformers as the oracle: every
logprob equals log_softmax of the HF model's logits for the same checkpoint and tokens."""

from __future__ import annotations

import pytest
import torch

from eaas.engine.sequence import SamplingParams

pytestmark = pytest.mark.asyncio
TOL = 1e-4


def hf_logprobs(hf_model, ids: list[int]) -> torch.Tensor:
    """[len(ids), V]: row p is log_softmax of the logits that predict token p + 1."""
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1)


def joined(chunks: list, key: str) -> list:
    return [x for c in chunks if c.choices and c.choices[0].logprobs for x in getattr(c.choices[0].logprobs, key)]


async def test_completion_echo_logprobs_equal_transformers_log_softmax(openai_client, service, hf_model):
    prompt = "Hello, "
    prompt_ids = service.encode(prompt)
    request = dict(model="tiny-mixtral", prompt=prompt, max_tokens=6, temperature=0, echo=True, logprobs=3,
                   extra_body={"ignore_eos": True})
    done = await openai_client.completions.create(**request)

    choice = done.choices[0]
    out_ids = choice.model_extra["token_ids"]
    ids = prompt_ids + out_ids
    ref = hf_logprobs(hf_model, ids)
    lp = choice.logprobs
    assert choice.text == prompt + service.tokenizer.decode(out_ids, skip_special_tokens=True)
    assert lp.tokens == [service.tokenizer.decode([t]) for t in ids]
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts the first token
    expected = [ref[p - 1, ids[p]].item() for p in range(1, len(ids))]
    assert max(abs(a - b) for a, b in zip(lp.token_logprobs[1:], expected)) < TOL
    for p in range(1, len(ids)):  # the top 3 and the chosen token (vLLM's form), keyed by their text
        top = ref[p - 1].topk(3)
        expected_top: dict[str, float] = {}
        for t, v in [*zip(top.indices.tolist(), top.values.tolist()), (ids[p], ref[p - 1, ids[p]].item())]:
            expected_top.setdefault(service.tokenizer.decode([t]), v)
        assert lp.top_logprobs[p] == pytest.approx(expected_top, abs=TOL)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(ids))]
    assert out_ids == ref[len(prompt_ids) - 1:-1].argmax(-1).tolist()  # greedy: each is the most likely

    chunks = [c async for c in await openai_client.completions.create(**request, stream=True)]
    assert "".join(c.choices[0].text for c in chunks) == choice.text
    for key in ("tokens", "token_logprobs", "top_logprobs", "text_offset"):
        assert joined(chunks, key) == getattr(lp, key), key


async def test_chat_logprobs_and_top_logprobs_equal_transformers_log_softmax(openai_client, service, hf_model):
    messages = [{"role": "user", "content": "hi"}]
    prompt_ids = service.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
    request = dict(model="tiny-mixtral", messages=messages, max_tokens=5, temperature=0, logprobs=True,
                   top_logprobs=4, extra_body={"ignore_eos": True}, user="someone")
    done = await openai_client.chat.completions.create(**request)

    out_ids = done.choices[0].model_extra["token_ids"]
    ref = hf_logprobs(hf_model, list(prompt_ids) + out_ids)[len(prompt_ids) - 1:]
    content = done.choices[0].logprobs.content
    assert len(content) == len(out_ids) == 5
    for i, (item, t) in enumerate(zip(content, out_ids)):
        assert abs(item.logprob - ref[i, t].item()) < TOL
        assert item.bytes == ([t] if t < 256 else list(service.tokenizer.decode([t]).encode()))
        top = ref[i].topk(4)
        assert [x.logprob for x in item.top_logprobs] == pytest.approx(top.values.tolist(), abs=TOL)
        assert [x.bytes for x in item.top_logprobs] == [[j] if j < 256 else list(service.tokenizer.decode([j]).encode())
                                                       for j in top.indices.tolist()]

    chunks = [c async for c in await openai_client.chat.completions.create(**request, stream=True)]
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.content]
    assert [x.model_dump() for x in streamed] == [x.model_dump() for x in content]


async def test_n_choices_are_the_seeded_samples_and_share_the_prompt_kv(openai_client, service, reference_engine,
                                                                        monkeypatch):
    prompt_ids = list(range(40, 80))  # 40 tokens: two full KV blocks of 16 and 8 more; used by no other test
    fed: list[int] = []
    forward = service.engine.runner.forward

    def counting_forward(input_ids, *args, **kwargs):
        fed.append(len(input_ids))
        return forward(input_ids, *args, **kwargs)

    monkeypatch.setattr(service.engine.runner, "forward", counting_forward)
    done = await openai_client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=4, n=3,
                                                  seed=5, extra_body={"ignore_eos": True})

    expected = [reference_engine.generate([prompt_ids], SamplingParams(max_tokens=4, temperature=1.0, seed=5 + i,
                                                                       ignore_eos=True))[0] for i in range(3)]
    assert [c.index for c in done.choices] == [0, 1, 2]
    assert [c.model_extra["token_ids"] for c in done.choices] == expected
    assert len({tuple(e) for e in expected}) == 3
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (40, 12)
    # The first choice computes the prompt; the others only its last, partial block (8 tokens); then each
    # feeds 3 decode tokens. Recomputing the prompt for each would feed 3 * 40 + 9.
    assert sum(fed) == 40 + 2 * 8 + 3 * 3

    stream = await openai_client.completions.create(model="tiny-mixtral", prompt=prompt_ids, max_tokens=4, n=3,
                                                    seed=5, stream=True, stream_options={"include_usage": True},
                                                    extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    by_choice = {i: [t for c in chunks for ch in c.choices if ch.index == i for t in ch.model_extra["token_ids"]]
                 for i in range(3)}
    assert [by_choice[i] for i in range(3)] == expected
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12


async def test_chat_n_streams_a_role_chunk_per_choice(openai_client):
    stream = await openai_client.chat.completions.create(
        model="tiny-mixtral", messages=[{"role": "user", "content": "hi"}], max_tokens=3, n=2, temperature=0,
        stream=True, extra_body={"ignore_eos": True})
    chunks = [c async for c in stream]
    roles = [c.choices[0].index for c in chunks if c.choices[0].delta.role == "assistant"]
    finished = sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason == "length")
    assert roles == [0, 1] and finished == [0, 1]
