"""The SDK's retry/resume decisions, alone: which gateway next, what the resumed request carries."""

from __future__ import annotations

import grpc
import pytest

from eaas.client.common import GenerationError, ResumableStream, build_request
from eaas.protos import gateway_pb2


def test_resume_moves_to_the_next_gateway_with_the_tokens_received():
    req = build_request(prompt_ids=[1, 2, 3], max_tokens=8, session_id="s1")
    stream = ResumableStream(req, ["a:1", "b:2"], start=0, timeout=30, retries=3, backoff_s=0.1)
    address, attempt, _ = stream.next_attempt()
    assert address == "a:1" and list(attempt.resume_token_ids) == []
    stream.got(gateway_pb2.GenerateResponse(token_ids=[7], index=0))
    stream.got(gateway_pb2.GenerateResponse(token_ids=[9], index=1))
    assert stream.failed(grpc.StatusCode.UNAVAILABLE, "socket closed") == pytest.approx(0.1)
    address, attempt, _ = stream.next_attempt()
    assert address == "b:2"
    assert list(attempt.resume_token_ids) == [7, 9]
    assert attempt.session_id == "s1" and list(attempt.prompt_ids) == [1, 2, 3]
    assert list(req.resume_token_ids) == []  # the original request is untouched


def test_non_retryable_codes_and_exhausted_retries_raise():
    req = build_request(prompt_ids=[1], max_tokens=2)
    stream = ResumableStream(req, ["a:1"], start=0, timeout=30, retries=1, backoff_s=0.0)
    with pytest.raises(GenerationError) as bad:
        stream.failed(grpc.StatusCode.INVALID_ARGUMENT, "token id out of range")
    assert bad.value.code == grpc.StatusCode.INVALID_ARGUMENT
    stream.failed(grpc.StatusCode.UNAVAILABLE, "")
    with pytest.raises(GenerationError):
        stream.failed(grpc.StatusCode.UNAVAILABLE, "")


def test_deadline_is_checked_before_each_attempt():
    stream = ResumableStream(build_request(prompt_ids=[1]), ["a:1"], start=0, timeout=0.0, retries=3, backoff_s=0)
    with pytest.raises(GenerationError) as late:
        stream.next_attempt()
    assert late.value.code == grpc.StatusCode.DEADLINE_EXCEEDED


def test_request_needs_exactly_one_prompt_form():
    with pytest.raises(ValueError):
        build_request()
    with pytest.raises(ValueError):
        build_request(prompt_ids=[1], prompt="x")
