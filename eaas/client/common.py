"""What the sync and asyncio clients share: request building, retry decisions, errors, results."""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass, field

import grpc

from eaas.auth import API_KEY_ENV, bearer
from eaas.client.channels import GatewayChannels
from eaas.protos import gateway_pb2

# UNAVAILABLE: the gateway is gone or has no replica for an expert; a stream cut by a dying gateway
# may also surface as UNKNOWN/INTERNAL ("RST_STREAM", "Socket closed") — all worth another gateway.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}


class GenerationError(Exception):
    """A generation that failed for good (bad request, or every gateway failed); `code` is a grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


@dataclass(frozen=True)
class TokenLogprob:
    """A generated token's log-probability (log_softmax of the raw logits, before penalties and
    temperature) and the `logprobs` most likely tokens at its position, most likely first."""
    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Chunk:
    token_ids: list[int]
    text: str
    index: int
    finish_reason: str | None
    logprobs: list[TokenLogprob] = field(default_factory=list)  # one per token id when the request asked


@dataclass
class Completion:
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    resumes: int = 0  # how many times the stream moved to another gateway
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, chunk: Chunk) -> None:
        self.token_ids.extend(chunk.token_ids)
        self.text += chunk.text
        self.finish_reason = chunk.finish_reason or self.finish_reason
        self.logprobs.extend(chunk.logprobs)


def build_request(prompt_ids=None, prompt=None, max_tokens=16, temperature=0.0, top_p=1.0, seed=None,
                  stop_token_ids=(), ignore_eos=False, session_id="", request_id="", presence_penalty=0.0,
                  frequency_penalty=0.0, repetition_penalty=1.0, min_tokens=0, logprobs=None,
                  stop=None) -> gateway_pb2.GenerateRequest:
    """Every field of the gRPC GenerateRequest, named and defaulted as in OpenAI's (and vLLM's) API:
    presence_penalty / frequency_penalty in [-2, 2] over the output, repetition_penalty > 0 over prompt +
    output (1 = off), min_tokens before EOS or a stop token may end it, logprobs = how many top
    alternatives to return with each token's logprob (0..20; None = no logprobs), stop = a string or a list
    of strings that end the text before the first one (finish_reason "stop"; the gateway needs a tokenizer)."""
    if (prompt_ids is None) == (prompt is None):
        raise ValueError("give exactly one of prompt_ids or prompt")
    req = gateway_pb2.GenerateRequest(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                      stop_token_ids=list(stop_token_ids), ignore_eos=ignore_eos,
                                      session_id=session_id or uuid.uuid4().hex,
                                      request_id=request_id or uuid.uuid4().hex,
                                      presence_penalty=presence_penalty, frequency_penalty=frequency_penalty,
                                      repetition_penalty=repetition_penalty, min_tokens=min_tokens)
    if prompt_ids is not None:
        req.prompt_ids.extend(int(t) for t in prompt_ids)
    else:
        req.prompt = prompt
    if seed is not None:
        req.seed = seed
    if logprobs is not None:
        req.logprobs = logprobs
    if stop is not None:
        req.stop.extend([stop] if isinstance(stop, str) else stop)
    return req


class ResumableStream:
    """The decisions of one streamed generation across gateways (shared by both clients, no I/O)."""

    def __init__(self, req: gateway_pb2.GenerateRequest, addresses: list[str], start: int, timeout: float,
                 retries: int, backoff_s: float):
        self.req = req
        self.addresses = addresses
        self.attempt_index = start
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self.received: list[int] = []
        self.failures = 0

    def next_attempt(self) -> tuple[str, gateway_pb2.GenerateRequest, float]:
        """(gateway address, request continuing after what was received, seconds left)."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise GenerationError(grpc.StatusCode.DEADLINE_EXCEEDED, f"no answer within {self.timeout}s")
        address = self.addresses[self.attempt_index % len(self.addresses)]
        return address, resumed_request(self.req, self.received) if self.received else self.req, remaining

    def got(self, msg: gateway_pb2.GenerateResponse) -> Chunk:
        chunk = to_chunk(msg)
        self.received.extend(chunk.token_ids)
        return chunk

    def failed(self, code: grpc.StatusCode, details: str) -> float:
        """After a failed attempt: seconds to wait before the next gateway, or GenerationError."""
        if code not in RETRYABLE or self.failures >= self.retries:
            raise GenerationError(code, details or str(code))
        self.failures += 1
        self.attempt_index += 1  # another gateway, same session, continuing after `received`
        return min(self.backoff_s * self.failures, max(0.0, self.deadline - time.monotonic()))


def resumed_request(req: gateway_pb2.GenerateRequest, received: list[int]) -> gateway_pb2.GenerateRequest:
    """The same request, continuing after the tokens already received (same session id)."""
    again = gateway_pb2.GenerateRequest()
    again.CopyFrom(req)
    del again.resume_token_ids[:]
    again.resume_token_ids.extend(received)
    return again


def to_chunk(msg: gateway_pb2.GenerateResponse) -> Chunk:
    logprobs = [TokenLogprob(e.token_id, e.logprob, list(zip(e.top_ids, e.top_logprobs))) for e in msg.logprobs]
    return Chunk(list(msg.token_ids), msg.text, msg.index, msg.finish_reason or None, logprobs)


def auth_metadata(api_key: str | None) -> tuple | None:
    """gRPC call metadata carrying the API key (argument, else $EAAS_API_KEY); None without a key."""
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return (("authorization", bearer(key)),) if key else None


def normalize_addresses(addresses) -> list[str]:
    addrs = [addresses] if isinstance(addresses, str) else list(addresses)
    addrs = [a.strip() for a in addrs if a and a.strip()]
    if not addrs:
        raise ValueError("at least one gateway address is needed")
    return addrs


class GatewayClientBase:
    """What SyncClient and AsyncClient share: addresses, settings, auth metadata, one channel per gateway."""

    def __init__(self, addresses, timeout: float = 60.0, retries: int = 4, backoff_s: float = 0.2,
                 api_key: str | None = None, tls_ca_file: str | None = None, tls_cert_file: str | None = None,
                 tls_key_file: str | None = None, tls_server_name: str | None = None):
        """api_key: sent as `authorization: Bearer <key>` metadata; default $EAAS_API_KEY.
        tls_ca_file: connect over TLS, verifying the gateway against this CA (PEM); tls_cert_file/tls_key_file:
        a client certificate to present (to a gateway started with --tls-client-ca-file, or a TLS proxy
        that asks for one). The files are re-read when they change: new connections use rotated ones.
        tls_server_name: the name the gateway's certificate must carry, when it is not the address's
        host (a Service's ClusterIP, a port-forward)."""
        self.addresses = normalize_addresses(addresses)
        self._metadata = auth_metadata(api_key)
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s
        options = [("grpc.ssl_target_name_override", tls_server_name)] if tls_server_name else []
        self._channels = GatewayChannels(lambda address, creds: self._open_channel(address, creds, options),
                                         self._close_channel, tls_files(tls_ca_file, tls_cert_file, tls_key_file))
        self._next = 0

    @staticmethod
    def _open_channel(address: str, credentials, options: list):
        raise NotImplementedError

    def _close_channel(self, channel) -> None:
        raise NotImplementedError


def tls_files(ca_file: str | None, cert_file: str | None, key_file: str | None):
    """The client's TLS files (re-read when they change), or None (plaintext) when no file is given."""
    if not (ca_file or cert_file or key_file):
        return None
    from eaas.tls import TLSFiles

    return TLSFiles(cert_file, key_file, ca_file)
