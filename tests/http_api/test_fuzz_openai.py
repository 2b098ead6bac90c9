"""Hostile OpenAI bodies (hypothesis): wrong types, unicode, nested junk, huge or negative numbers. The parser
returns a request or raises InvalidRequest — nothing else — and the real server answers 200 or 4xx in
OpenAI's error shape, never 500, then still serves exact completions."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eaas.engine.sequence import SamplingParams
from eaas.gateway.openai_http import MAX_BODY_BYTES
from eaas.gateway.openai_protocol import InvalidRequest, parse_chat_request, parse_completion_request

JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.integers(-2**70, 2**70) |
                st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([10**400, -10**400, 2**64]) |
                st.text(max_size=20))
JUNK = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4) |
                    st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
FIELDS = ["model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "seed",
          "stop", "stop_token_ids", "ignore_eos", "stream", "stream_options", "n", "best_of", "echo", "logprobs",
          "logit_bias", "tools", "suffix"]
PLAUSIBLE = {
    "prompt": st.text(max_size=40) | st.lists(st.integers(-5, 400), max_size=8),
    "messages": st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]),
                                                "content": st.text(max_size=30)}), max_size=3),
    "max_tokens": st.integers(-3, 40) | st.sampled_from([2**31, 2**63, 10**30]),
    "temperature": st.floats() | st.integers(-2, 3),
    "top_p": st.floats() | st.integers(-1, 2),
    "seed": st.integers(-2, 2**64 + 2),
    "stop": st.text(max_size=5) | st.lists(st.text(max_size=5), max_size=3),
}


@st.composite
def bodies(draw):
    if draw(st.integers(0, 9)) == 0:
        return draw(JUNK)  # not even an object
    names = draw(st.lists(st.sampled_from(FIELDS) | st.text(max_size=10), max_size=8, unique=True))
    return {n: draw(PLAUSIBLE[n] if n in PLAUSIBLE and draw(st.booleans()) else JUNK) for n in names}


def _check(parse, body):
    try:
        req = parse(body)
    except InvalidRequest as exc:
        assert str(exc)
        return
    req.params.validate()  # whatever the parser accepts, the engine's own rules accept
    assert isinstance(req.params, SamplingParams)


@given(bodies())
@example({"prompt": [1], "temperature": 10**400})
@example({"prompt": [1], "top_p": -10**400})
@example({"prompt": [1], "max_tokens": 1, "n": 10**400})
def test_completion_bodies_parse_or_raise_invalid_request(body):
    _check(parse_completion_request, body)


@given(bodies())
@example({"messages": [{"role": "user", "content": "hi"}], "temperature": 10**400})
def test_chat_bodies_parse_or_raise_invalid_request(body):
    _check(parse_chat_request, body)


@pytest.mark.asyncio
async def test_a_burst_of_junk_gets_4xx_and_the_server_still_serves_exactly(client, reference_engine):
    prompt = [72, 101, 108, 108, 111]
    expected = reference_engine.generate([prompt], SamplingParams(max_tokens=6, temperature=0.0))[0]
    seen: list[tuple] = []
    # hypothesis drives a sync function: draw the bodies first, then send them on this test's loop
    settings(max_examples=max(50, settings().max_examples // 10))(
        given(bodies(), st.sampled_from(["/v1/completions", "/v1/chat/completions"]))(
            lambda body, path: seen.append((path, body))))()
    statuses = set()
    for path, body in seen:
        if isinstance(body, dict):  # keep accepted generations short; huge or invalid limits stay as drawn
            for name in ("max_tokens", "max_completion_tokens"):
                value = body.get(name)
                if value is None or (type(value) is int and 0 < value < 2**20):
                    body = {**body, name: 3}
        resp = await asyncio.wait_for(client.post(path, data=json.dumps(body)), 60)
        text = await resp.text()
        assert resp.status in (200, 400, 404), (resp.status, body, text)
        if resp.status != 200:
            assert json.loads(text)["error"]["message"]
        statuses.add(resp.status)
    assert 400 in statuses
    resp = await client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 6, "temperature": 0})
    assert resp.status == 200 and (await resp.json())["choices"][0]["token_ids"] == expected


@pytest.mark.asyncio
async def test_an_oversized_body_is_413_in_openai_shape(client):
    resp = await client.post("/v1/completions", data=b'{"prompt": "' + b"a" * MAX_BODY_BYTES + b'"}')
    assert resp.status == 413
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


def test_a_400_digit_temperature_is_invalid_request_not_overflow():
    """Found by the fuzzer: math.isfinite(10**400) raised OverflowError (HTTP 500)."""
    for field in ("temperature", "top_p"):
        with pytest.raises(InvalidRequest, match="finite number"):
            parse_completion_request({"prompt": [1], field: 10**400})
