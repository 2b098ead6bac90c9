"""Bad requests get OpenAI's error shape with the right status, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest

from eaas.engine.factory import load_tokenizer, monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService

pytestmark = pytest.mark.asyncio

GOOD_COMPLETION = {"prompt": [1, 2, 3], "max_tokens": 2, "temperature": 0, "ignore_eos": True}
USER_SAYS_HI = [{"role": "user", "content": "hi"}]

# (path, raw body, the `param` the error must name)
BAD_REQUESTS = {
    "malformed json": ("/v1/completions", b'{"prompt": [1, 2', None),
    "body not an object": ("/v1/completions", b"[1, 2, 3]", None),
    "no prompt": ("/v1/completions", b'{"max_tokens": 4}', "prompt"),
    "prompt of wrong type": ("/v1/completions", b'{"prompt": 12}', "prompt"),
    "prompt of floats": ("/v1/completions", b'{"prompt": [1.5, 2]}', "prompt"),
    "two prompts": ("/v1/completions", b'{"prompt": ["a", "b"]}', "prompt"),
    "negative max_tokens": ("/v1/completions", b'{"prompt": "a", "max_tokens": -1}', "max_tokens"),
    "max_tokens as a string": ("/v1/completions", b'{"prompt": "a", "max_tokens": "8"}', "max_tokens"),
    "negative temperature": ("/v1/completions", b'{"prompt": "a", "temperature": -0.1}', "temperature"),
    "top_p of zero": ("/v1/completions", b'{"prompt": "a", "top_p": 0}', "top_p"),
    "top_p above one": ("/v1/completions", b'{"prompt": "a", "top_p": 1.5}', "top_p"),
    "stream not a bool": ("/v1/completions", b'{"prompt": "a", "stream": "yes"}', "stream"),
    "empty stop string": ("/v1/completions", b'{"prompt": "a", "stop": [""]}', "stop"),
    "suffix": ("/v1/completions", b'{"prompt": "a", "suffix": "z"}', "suffix"),
    "n above 128": ("/v1/completions", b'{"prompt": "a", "n": 129}', "n"),
    "presence_penalty above 2": ("/v1/completions", b'{"prompt": "a", "presence_penalty": 2.5}', "presence_penalty"),
    "logprobs above 20": ("/v1/completions", b'{"prompt": "a", "logprobs": 21}', "logprobs"),
    "id outside the vocabulary": ("/v1/completions", b'{"prompt": [1, 320]}', None),
    "negative id": ("/v1/completions", b'{"prompt": [-1, 2]}', None),
    "prompt plus max_tokens too long": ("/v1/completions", b'{"prompt": [1, 2], "max_tokens": 5000}', None),
    "no messages": ("/v1/chat/completions", b'{"max_tokens": 2}', "messages"),
    "message without content": ("/v1/chat/completions", b'{"messages": [{"role": "user"}]}', "messages"),
    "stream of a bad chat": ("/v1/chat/completions", b'{"messages": [], "stream": true}', "messages"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
async def test_bad_request_gets_400_with_openai_error_shape_and_serving_goes_on(client, case):
    path, raw, param = BAD_REQUESTS[case]
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})

    assert resp.status == 400
    error = (await resp.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"]

    after = await client.post("/v1/completions", json=GOOD_COMPLETION)
    assert after.status == 200 and len((await after.json())["choices"][0]["token_ids"]) == 2


async def test_bad_streamed_request_gets_400_before_any_event(client):
    resp = await client.post("/v1/completions", json={"prompt": [1, 999], "stream": True})
    assert resp.status == 400 and resp.content_type == "application/json"
    assert "outside the vocabulary" in (await resp.json())["error"]["message"]


@pytest.mark.parametrize("path,body", [("/v1/completions", {"prompt": "a"}),
                                       ("/v1/chat/completions", {"messages": USER_SAYS_HI})])
async def test_unknown_model_gets_404_model_not_found(client, path, body):
    resp = await client.post(path, json={**body, "model": "gpt-4"})
    assert resp.status == 404
    error = (await resp.json())["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model" and "gpt-4" in error["message"]


async def test_unknown_route_and_wrong_method_get_json_errors(client):
    missing = await client.get("/v1/embeddings")
    wrong_method = await client.get("/v1/completions")
    assert (missing.status, wrong_method.status) == (404, 405)
    for resp in (missing, wrong_method):
        assert (await resp.json())["error"]["type"] == "invalid_request_error"


class ExpertsUnreachable(RuntimeError):
    code = grpc.StatusCode.UNAVAILABLE  # what the remote expert backend raises when no replica answers


@pytest.fixture
def failing_service(tiny_model_dir):
    """A service whose engine step fails once `steps_left` reaches 0 (set by the test)."""
    engine = monolithic_engine(tiny_model_dir)
    real_step = engine.step

    def step():
        if engine.steps_left == 0:
            raise ExpertsUnreachable("no replica left for expert 3")
        engine.steps_left -= 1
        return real_step()

    engine.steps_left, engine.step = 0, step
    svc = EngineService(engine, load_tokenizer(tiny_model_dir))
    svc.start()
    yield svc
    svc.stop()


async def test_failure_before_the_first_token_gets_503(failing_service, serve):
    async with serve(failing_service) as client:
        for stream in (False, True):
            resp = await client.post("/v1/completions", json={"prompt": [1, 2], "stream": stream})
            assert resp.status == 503
            assert (await resp.json())["error"] == {"message": "no replica left for expert 3", "type": "server_error",
                                                    "param": None, "code": "unavailable"}


async def test_failure_mid_stream_ends_it_with_an_error_event(failing_service, serve):
    failing_service.engine.steps_left = 3
    async with serve(failing_service) as client:
        resp = await client.post("/v1/completions", json={"prompt": [1, 2], "max_tokens": 10, "ignore_eos": True,
                                                           "stream": True})
        assert resp.status == 200
        events = [json.loads(e[len("data: "):]) for e in (await resp.text()).split("\n\n") if e]
    assert [len(e["choices"][0]["token_ids"]) for e in events[:-1]] == [1, 1, 1]
    assert events[-1]["error"]["code"] == "unavailable"


async def test_a_failed_step_fails_its_batch_and_the_queue_keeps_its_turn(tiny_model_dir, reference_engine):
    from eaas.engine.scheduler import ScheduleLimits
    from eaas.gateway.engine_service import GenerationFailed

    engine = monolithic_engine(tiny_model_dir, limits=ScheduleLimits(max_num_seqs=1, max_batched_tokens=64))
    real_forward = engine._forward
    calls = {"n": 0}

    def forward_failing_once(batch, counts):
        calls["n"] += 1
        if calls["n"] == 2:  # the first request's first decode step: experts unreachable
            raise ExpertsUnreachable("no replica left for expert 3")
        return real_forward(batch, counts)

    engine._forward = forward_failing_once
    svc = EngineService(engine, None)
    svc.start()
    try:
        params = SamplingParams(max_tokens=4, ignore_eos=True)

        async def run(prompt):
            return [e.token_ids[0] async for e in svc.generate(prompt, params)]

        first, second = await asyncio.gather(run([1, 2, 3]), run([4, 5, 6]), return_exceptions=True)
        assert isinstance(first, GenerationFailed) and first.code == "unavailable"
        # queued: unaffected, exact (a second engine: this one is stepped by the service's thread)
        assert second == reference_engine.generate([[4, 5, 6]], params)[0]
    finally:
        svc.stop()
