"""The OpenAI-compatible HTTP API against a real server: exact ids, streams, chat, metrics, disconnects."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from prometheus_client import REGISTRY

from eaas.engine.sequence import SamplingParams

pytestmark = pytest.mark.asyncio

PROMPT_IDS = [72, 101, 108, 108, 111, 44, 32]
CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi there"}]


def sse_payloads(raw: str) -> list:
    """The `data:` payloads of an SSE body, JSON-decoded, with the final [DONE] kept as a string."""
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events), events
    return [e[len("data: "):] if e == "data: [DONE]" else json.loads(e[len("data: "):]) for e in events]


async def post_json(client, path: str, body: dict) -> dict:
    resp = await client.post(path, json=body)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def post_stream(client, path: str, body: dict) -> list:
    resp = await client.post(path, json={**body, "stream": True})
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    payloads = sse_payloads(await resp.text())
    assert payloads[-1] == "[DONE]"
    return payloads[:-1]


async def test_models_lists_the_served_model(client, model_name):
    body = await (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in body["data"]] == [(model_name, "model", "eaas")]


@pytest.mark.parametrize("prompt_form", ["ids", "one_id_list", "text", "one_text"])
async def test_greedy_completion_equals_engine_generate(client, service, reference_engine, model_name, prompt_form):
    prompt = {"ids": PROMPT_IDS, "one_id_list": [PROMPT_IDS], "text": "Hello, ", "one_text": ["Hello, "]}[prompt_form]
    prompt_ids = PROMPT_IDS if "id" in prompt_form else service.encode("Hello, ")
    expected = reference_engine.generate([prompt_ids], SamplingParams(max_tokens=24, temperature=0.0))[0]

    body = await post_json(client, "/v1/completions",
                           {"model": model_name, "prompt": prompt, "max_tokens": 24, "temperature": 0})

    choice = body["choices"][0]
    assert body["object"] == "text_completion" and body["model"] == model_name and body["id"].startswith("cmpl-")
    assert choice["token_ids"] == expected
    assert choice["finish_reason"] == ("length" if len(expected) == 24 else "stop")
    assert choice["text"] == service.tokenizer.decode(expected, skip_special_tokens=True)
    assert body["usage"] == {"prompt_tokens": len(prompt_ids), "completion_tokens": len(expected),
                             "total_tokens": len(prompt_ids) + len(expected)}


async def test_default_temperature_is_one_and_seeded_sampling_is_reproducible(client, reference_engine):
    expected = reference_engine.generate([PROMPT_IDS], SamplingParams(max_tokens=20, temperature=1.0, seed=11,
                                                                      ignore_eos=True))[0]
    body = await post_json(client, "/v1/completions",
                           {"prompt": PROMPT_IDS, "max_tokens": 20, "seed": 11, "ignore_eos": True})
    assert body["choices"][0]["token_ids"] == expected


async def test_streamed_chunks_concatenate_to_the_non_stream_completion(client):
    request = {"prompt": "Hello, ", "max_tokens": 30, "temperature": 0, "ignore_eos": True}
    whole = await post_json(client, "/v1/completions", request)
    chunks = await post_stream(client, "/v1/completions", {**request, "stream_options": {"include_usage": True}})

    *token_chunks, usage_chunk = chunks
    choices = [c["choices"][0] for c in token_chunks]
    assert {c["object"] for c in chunks} == {"text_completion"} and len({c["id"] for c in chunks}) == 1
    assert "".join(c["text"] for c in choices) == whole["choices"][0]["text"]
    assert [t for c in choices for t in c["token_ids"]] == whole["choices"][0]["token_ids"]
    assert [c["finish_reason"] for c in choices] == [None] * (len(choices) - 1) + ["length"]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == whole["usage"]


async def test_stop_string_truncates_the_text_and_finishes_with_stop(client, service):
    # Seeded sampling over bytes gives varied text; stop at a character it reaches only after a few tokens.
    request = {"prompt": PROMPT_IDS, "max_tokens": 60, "temperature": 1.0, "seed": 5, "ignore_eos": True}
    free = (await post_json(client, "/v1/completions", request))["choices"][0]
    stop = next(ch for ch in free["text"][3:] if ch.isascii() and ch.isalnum() and free["text"].find(ch) >= 3)
    expected_text = free["text"][:free["text"].find(stop)]
    ok_before, cancelled_before = finished_requests("ok"), finished_requests("cancelled")

    stopped = (await post_json(client, "/v1/completions", {**request, "stop": [stop, "never-seen"]}))["choices"][0]
    streamed = [c["choices"][0] for c in await post_stream(client, "/v1/completions", {**request, "stop": stop})]

    assert stopped["text"] == expected_text and stopped["finish_reason"] == "stop"
    ids = stopped["token_ids"]
    assert 0 < len(ids) < len(free["token_ids"]) and free["token_ids"][:len(ids)] == ids
    assert "".join(c["text"] for c in streamed) == expected_text
    assert streamed[-1]["finish_reason"] == "stop"
    assert [t for c in streamed for t in c["token_ids"]] == ids
    # a stop string is a normal finish: counted ok, and the sequence's slot is freed at once
    assert (finished_requests("ok"), finished_requests("cancelled")) == (ok_before + 2, cancelled_before)
    assert await wait_until(lambda: service.busy == 0)


async def test_chat_completion_generates_from_the_chat_template(client, service, reference_engine, model_name):
    prompt_ids = service.tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)
    expected = reference_engine.generate([prompt_ids], SamplingParams(max_tokens=12, temperature=0.0))[0]

    body = await post_json(client, "/v1/chat/completions",
                           {"model": model_name, "messages": CHAT, "max_tokens": 12, "temperature": 0})

    choice = body["choices"][0]
    assert body["object"] == "chat.completion" and body["id"].startswith("chatcmpl-")
    assert choice["message"] == {"role": "assistant",
                                 "content": service.tokenizer.decode(expected, skip_special_tokens=True)}
    assert choice["token_ids"] == expected
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)


async def test_chat_stream_opens_with_the_role_and_concatenates_to_the_reply(client):
    request = {"messages": CHAT, "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    whole = (await post_json(client, "/v1/chat/completions", request))["choices"][0]
    chunks = await post_stream(client, "/v1/chat/completions", request)

    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    deltas = [c["choices"][0]["delta"] for c in chunks]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content", "") for d in deltas[1:]) == whole["message"]["content"]
    assert [t for c in chunks for t in c["choices"][0]["token_ids"]] == whole["token_ids"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def finished_requests(status: str) -> float:
    return REGISTRY.get_sample_value("eaas_gateway_requests_total", {"status": status}) or 0.0


@pytest.mark.parametrize("stream", [False, True])
async def test_completed_request_counts_as_ok(client, stream):
    ok_before, errors_before = finished_requests("ok"), finished_requests("error")
    request = {"prompt": PROMPT_IDS, "max_tokens": 3, "ignore_eos": True}
    await (post_stream if stream else post_json)(client, "/v1/completions", request)
    assert (finished_requests("ok"), finished_requests("error")) == (ok_before + 1, errors_before)


async def test_health_and_metrics_report_the_engine(client):
    await post_json(client, "/v1/completions", {"prompt": PROMPT_IDS, "max_tokens": 2})
    health = await client.get("/health")
    assert health.status == 200 and (await health.json()) == {"status": "ok"}

    metrics = await client.get("/metrics")
    assert metrics.status == 200 and metrics.headers["Content-Type"].startswith("text/plain; version=")
    text = await metrics.text()
    ttft_count = next(line for line in text.splitlines()
                      if line.startswith("eaas_gateway_time_to_first_token_seconds_count"))
    assert float(ttft_count.split()[-1]) >= 1


LONG_REQUEST = {"prompt": PROMPT_IDS, "max_tokens": 2000, "temperature": 0, "ignore_eos": True}  # runs for seconds


async def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    return condition()


async def leave_mid_stream_and_wait_for_the_slot(client, service) -> None:
    cancelled_before = finished_requests("cancelled")
    resp = await client.post("/v1/completions", json={**LONG_REQUEST, "stream": True})
    assert resp.status == 200
    assert (await resp.content.readline()).startswith(b"data: ")  # a token came: the sequence is running
    assert service.busy == 1
    resp.close()  # drops the connection

    assert await wait_until(lambda: service.busy == 0)
    assert finished_requests("cancelled") == cancelled_before + 1  # aborted, not run to its 2000 tokens


async def test_client_leaving_mid_stream_frees_its_slot(client, service):
    await leave_mid_stream_and_wait_for_the_slot(client, service)


async def test_client_leaving_mid_stream_frees_its_slot_when_aiohttp_cancels_the_handler(cancelling_client, service):
    await leave_mid_stream_and_wait_for_the_slot(cancelling_client, service)


async def test_client_leaving_a_non_stream_request_frees_its_slot(client, service):
    cancelled_before = finished_requests("cancelled")
    post = asyncio.create_task(client.post("/v1/completions", json=LONG_REQUEST))
    assert await wait_until(lambda: service.busy == 1)
    post.cancel()  # closes the connection while the server is still generating

    assert await wait_until(lambda: service.busy == 0)
    assert finished_requests("cancelled") == cancelled_before + 1


async def test_without_a_tokenizer_only_token_id_prompts_work(tokenizerless_client):
    chat = await tokenizerless_client.post("/v1/chat/completions", json={"messages": CHAT})
    text = await tokenizerless_client.post("/v1/completions", json={"prompt": "Hello"})
    for resp in (chat, text):
        assert resp.status == 400
        assert "tokenizer" in (await resp.json())["error"]["message"]

    body = await post_json(tokenizerless_client, "/v1/completions",
                           {"prompt": PROMPT_IDS, "max_tokens": 3, "temperature": 0, "ignore_eos": True})
    assert len(body["choices"][0]["token_ids"]) == 3 and body["choices"][0]["text"] == ""


async def test_without_a_tokenizer_stop_strings_are_refused_not_ignored(tokenizerless_client):
    resp = await tokenizerless_client.post("/v1/completions", json={"prompt": PROMPT_IDS, "max_tokens": 3,
                                                                    "stop": ["k"]})
    assert resp.status == 400
    error = (await resp.json())["error"]
    assert "stop strings need the model's tokenizer" in error["message"] and error["param"] == "stop"
