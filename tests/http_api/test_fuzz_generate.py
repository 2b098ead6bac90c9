"""Hostile gRPC Generate requests (hypothesis): any ids, limits, NaN/Inf sampling values and penalties,
logprobs and min_tokens of any size, empty or partial stop strings, resume tokens.
What the gateway's checks accept the engine can run; everything else is a RequestError (INVALID_ARGUMENT),
and the real gRPC server answers tokens or INVALID_ARGUMENT, then still serves exact completions."""

from __future__ import annotations

import asyncio
import math

import grpc
import pytest
from eaas.gateway.grpc_api import sampling_params, stop_strings
from eaas.protos import gateway_pb2, gateway_pb2_grpc
from gateway_grpc import grpc_gateway
from hypothesis import example, given, settings
from hypothesis import strategies as st

from eaas.engine.llm_engine import RequestError
from eaas.engine.sequence import SamplingParams

INT32 = st.integers(-2**31, 2**31 - 1)
FLOATS = st.floats(width=32) | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, 1.0])


@st.composite
def generate_requests(draw):
    req = gateway_pb2.GenerateRequest(
        prompt_ids=draw(st.lists(st.integers(-3, 600) | INT32, max_size=12)),
        max_tokens=draw(st.integers(0, 40) | st.integers(0, 2**32 - 1)),
        stop_token_ids=draw(st.lists(INT32, max_size=4)),
        resume_token_ids=draw(st.lists(st.integers(-3, 600) | INT32, max_size=4)),
        ignore_eos=draw(st.booleans()), session_id=draw(st.text(max_size=20)), request_id=draw(st.text(max_size=20)),
        stop=draw(st.lists(st.text(max_size=6), max_size=3)),
        min_tokens=draw(st.integers(0, 40) | st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        req.temperature = draw(FLOATS)
    if draw(st.booleans()):
        req.top_p = draw(FLOATS)
    if draw(st.booleans()):
        req.seed = draw(st.integers(0, 2**64 - 1))
    for penalty in ("presence_penalty", "frequency_penalty", "repetition_penalty"):
        if draw(st.booleans()):
            setattr(req, penalty, draw(FLOATS))
    if draw(st.booleans()):
        req.logprobs = draw(st.integers(0, 30) | st.integers(0, 2**32 - 1))
    if not req.prompt_ids and draw(st.booleans()):
        req.prompt = draw(st.text(max_size=30))
    return req


def _checked(service, req) -> bool:
    """The gateway's own checks, as Generate runs them (no engine step): True if accepted."""
    try:
        ids = list(req.prompt_ids) or (service.encode(req.prompt) if req.HasField("prompt") else [])
        if not ids:
            raise RequestError("empty request")
        params = sampling_params(req)
        stop_strings(req)
        resume = list(req.resume_token_ids)
        if resume and len(resume) >= params.max_tokens:
            raise RequestError("resume_token_ids already hold max_tokens tokens")
        service.engine.check_request(ids + resume, params)
    except RequestError as exc:
        assert str(exc)
        return False
    return True


@given(generate_requests())
@example(gateway_pb2.GenerateRequest(prompt_ids=[1, 2], max_tokens=2, temperature=math.nan))
@example(gateway_pb2.GenerateRequest(prompt_ids=[1, 2], max_tokens=2, temperature=math.inf))
def test_generate_requests_pass_the_checks_or_raise_request_error(service, req):
    if _checked(service, req):
        params = sampling_params(req)
        assert math.isfinite(params.temperature) and 0 < params.top_p <= 1
        assert -2 <= params.presence_penalty <= 2 and -2 <= params.frequency_penalty <= 2
        assert 0 < params.repetition_penalty < math.inf and 0 <= params.min_tokens <= params.max_tokens
        assert params.logprobs is None or 0 <= params.logprobs <= 20
        assert all(req.stop)


def test_nan_or_infinite_temperature_is_refused(service):
    """Found by the fuzzer: NaN passed `temperature < 0` and reached the sampler."""
    for t in (math.nan, math.inf):
        with pytest.raises(ValueError, match="temperature"):
            SamplingParams(max_tokens=2, temperature=t).validate()


@pytest.mark.asyncio
async def test_a_burst_of_junk_is_refused_and_the_gateway_still_serves_exactly(service, reference_engine):
    prompt = [72, 101, 108, 108, 111]
    expected = reference_engine.generate([prompt], SamplingParams(max_tokens=5, temperature=0.0))[0]
    drawn: list = []
    settings(max_examples=max(50, settings().max_examples // 10))(given(generate_requests())(lambda req: drawn.append(req)))()
    codes = set()
    async with grpc_gateway(service) as address, grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        for req in drawn:
            if 0 < req.max_tokens < 2**20:
                req.max_tokens = min(req.max_tokens, 3 + len(req.resume_token_ids))  # short, still valid
            try:
                async for _ in stub.Generate(req, timeout=60):
                    pass
                codes.add(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details(), req)
                codes.add(err.code())
        assert {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT} <= codes
        got = [t for r in [m async for m in stub.Generate(gateway_pb2.GenerateRequest(
            prompt_ids=prompt, max_tokens=5, temperature=0.0), timeout=60)] for t in r.token_ids]
        assert got == expected
    deadline = asyncio.get_running_loop().time() + 10
    while service.busy and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
