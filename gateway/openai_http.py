"""The gateway's OpenAI-compatible HTTP API (aiohttp) over an EngineService, plus /health and /metrics.

Routes: GET /v1/models, POST /v1/completions, POST /v1/chat/completions (text or SSE stream), GET /health,
GET /metrics. Request rules and body shapes live in openai_protocol.py; this module only does the I/O.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import jinja2
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from eaas.auth import ApiKeyFile
from eaas.engine.llm_engine import RequestError
from eaas.gateway.auth import http_api_key_middleware
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S, ClientStalled, bound_stream_buffers, write_or_stall
from eaas.gateway.choice_streams import ChoiceStreams
from eaas.gateway.engine_service import EngineService, GenerationFailed, QueueFull
from eaas.gateway.openai_bodies import (
    ChatLogprobs,
    CompletionLogprobs,
    ResponseHeader,
    chat_choice,
    chat_delta_choice,
    chat_role_choice,
    completion_choice,
    error_body,
    models_body,
    usage_body,
)
from eaas.gateway.openai_choice import ChoiceBuilder, Echo
from eaas.gateway.openai_protocol import (
    InvalidRequest,
    ParsedRequest,
    StopStringCutter,
    parse_chat_request,
    parse_completion_request,
)
from eaas.gateway.token_strings import TokenStrings

log = logging.getLogger("eaas.gateway.http")
MAX_BODY_BYTES = 4 << 20  # a larger body is refused with 413: room for a 128k-token prompt as an id list


class ModelNotFound(LookupError):
    """The request names a model this gateway does not serve."""


class ClientGone(Exception):
    """The client closed its connection: stop generating for it."""


@dataclass(frozen=True)
class Endpoint:
    """How one generation endpoint shapes its ids, bodies, choices and stream chunks."""
    id_prefix: str
    body_object: str
    chunk_object: str
    choice: Callable[..., dict]         # (index, text, token_ids, finish_reason, logprobs) -> a body's choice
    delta: Callable[..., dict]          # the same for a stream chunk
    opening_choice: Callable[[int], dict] | None   # each choice's first chunk, before its tokens
    logprobs: type                      # CompletionLogprobs or ChatLogprobs


COMPLETIONS = Endpoint("cmpl", "text_completion", "text_completion", completion_choice, completion_choice, None,
                       CompletionLogprobs)
CHAT = Endpoint("chatcmpl", "chat.completion", "chat.completion.chunk", chat_choice, chat_delta_choice,
                chat_role_choice, ChatLogprobs)


def build_http_app(service: EngineService, model_name: str, api_key: str | ApiKeyFile | None = None,
                   stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> web.Application:
    """api_key: every route but /health and /metrics needs `Authorization: Bearer <api_key>` (an
    ApiKeyFile: the key the file holds now).
    stall_timeout_s: a stream whose client reads nothing for this long is aborted (gateway/stall.py)."""
    api = OpenAIHandlers(service, model_name, stall_timeout_s)
    auth = [http_api_key_middleware(api_key)] if api_key else []
    app = web.Application(middlewares=[*auth, openai_errors], client_max_size=MAX_BODY_BYTES)
    app.add_routes([
        web.get("/v1/models", api.models),
        web.post("/v1/completions", api.completions),
        web.post("/v1/chat/completions", api.chat_completions),
        web.get("/health", api.health),
        web.get("/metrics", api.metrics),
    ])
    return app


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids of a chat, rendered by the tokenizer's own chat template."""
    if tokenizer is None:
        raise RequestError("this model has no tokenizer, so no chat template: use /v1/completions with token ids")
    if not getattr(tokenizer, "chat_template", None):
        raise RequestError("this model's tokenizer has no chat template: use /v1/completions")
    try:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=False)
    except (jinja2.TemplateError, ValueError) as exc:  # templates raise on chats they refuse (roles, order)
        raise RequestError(f"the chat template refused these messages: {exc}") from None
    return list(ids)


def _error(status: int, message: str, param: str | None = None, error_type: str = "invalid_request_error",
           code: str | None = None) -> web.Response:
    return web.json_response(error_body(message, param, error_type, code), status=status)


@web.middleware
async def openai_errors(request: web.Request, handler) -> web.StreamResponse:
    """Every failure as OpenAI's error body; the server keeps serving."""
    try:
        return await handler(request)
    except InvalidRequest as exc:
        return _error(400, str(exc), exc.param)
    except RequestError as exc:
        return _error(400, str(exc), exc.param)
    except ModelNotFound as exc:
        return _error(404, str(exc), "model", code="model_not_found")
    except QueueFull as exc:
        response = _error(429, str(exc), error_type="rate_limit_error", code="queue_full")
        response.headers["Retry-After"] = str(exc.retry_after_s)
        return response
    except GenerationFailed as exc:
        return _error(503 if exc.code == "unavailable" else 500, str(exc), error_type="server_error", code=exc.code)
    except ClientGone:
        return web.Response(status=499)  # nobody reads it: nginx's "client closed request"
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        error_type = "invalid_request_error" if exc.status < 500 else "server_error"
        return _error(exc.status, f"{exc.reason}: {request.method} {request.path}", error_type=error_type)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return _error(500, "internal server error", error_type="server_error")


class OpenAIHandlers:
    def __init__(self, service: EngineService, model_name: str, stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S):
        self.service = service
        self.model_name = model_name
        self.stall_timeout_s = stall_timeout_s
        self.created = int(time.time())
        self.token_strings = TokenStrings(service.tokenizer)

    async def models(self, request: web.Request) -> web.Response:
        return web.json_response(models_body(self.model_name, self.created))

    async def health(self, request: web.Request) -> web.Response:
        alive = self.service.alive
        return web.json_response({"status": "ok" if alive else "engine thread stopped"}, status=200 if alive else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_completion_request(await _json_body(request))
        self._check_model(req.model)
        prompt_ids = req.prompt if isinstance(req.prompt, list) else self.service.encode(req.prompt)
        echo = None
        if req.echo:
            text = req.prompt if isinstance(req.prompt, str) else self._decode(prompt_ids)
            echo = Echo(text, list(prompt_ids))
        return await self._generate(request, req, prompt_ids, COMPLETIONS, echo)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_chat_request(await _json_body(request))
        self._check_model(req.model)
        prompt_ids = chat_prompt_ids(self.service.tokenizer, req.messages)
        return await self._generate(request, req, prompt_ids, CHAT)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ModelNotFound(f"the model {model!r} does not exist here: this gateway serves {self.model_name!r}")

    def _decode(self, ids: list[int]) -> str:
        tokenizer = self.service.tokenizer
        return "" if tokenizer is None else tokenizer.decode(ids, skip_special_tokens=True)

    def _bounded_writer(self, request_id: str):
        """write(response, bytes) that raises ClientStalled when the client reads nothing for the timeout."""
        def write(response: web.StreamResponse, data: bytes):
            return write_or_stall(response.write(data), self.stall_timeout_s, self.service.metrics, "http", request_id)
        return write

    async def _generate(self, request: web.Request, req: ParsedRequest, prompt_ids: list[int],
                        endpoint: Endpoint, echo: Echo | None = None) -> web.StreamResponse:
        header = ResponseHeader(f"{endpoint.id_prefix}-{uuid.uuid4().hex}", int(time.time()), self.model_name)
        params = req.sampling_params(len(prompt_ids), self.service.engine.model.max_positions)
        self.service.check_stop_strings(req.stop)
        choices = [ChoiceBuilder(i, StopStringCutter(req.stop), params.min_tokens,
                                 None if params.logprobs is None else endpoint.logprobs(self.token_strings), echo)
                   for i in range(req.n)]
        streams = ChoiceStreams(self.service, prompt_ids, req.choice_params(params), header.id)
        # Closing the event stream aborts every generation still running: on an error or a client that left.
        async with contextlib.aclosing(streams.events()) as events:
            if req.stream:
                return await _stream(request, streams, events, choices, req, header, endpoint, len(prompt_ids),
                                     self._bounded_writer(header.id))
            return await _collect(request, streams, events, choices, header, endpoint, len(prompt_ids))


async def _collect(request: web.Request, streams: ChoiceStreams, events, choices: list[ChoiceBuilder],
                   header: ResponseHeader, endpoint: Endpoint, prompt_tokens: int) -> web.Response:
    async for index, event in events:
        piece = choices[index].take(event)
        if piece is not None and piece.cut:
            streams.finish(index)  # a normal end (counted "ok"): the rest is not generated
            if all(c.finish_reason for c in choices):
                break
        if request.transport is None or request.transport.is_closing():
            raise ClientGone()
    usage = usage_body(prompt_tokens, sum(len(c.token_ids) for c in choices))
    body = header.envelope(endpoint.body_object, [c.whole(endpoint.choice) for c in choices], usage=usage)
    return web.json_response(body)


async def _stream(request: web.Request, streams: ChoiceStreams, events, choices: list[ChoiceBuilder],
                  req: ParsedRequest, header: ResponseHeader, endpoint: Endpoint,
                  prompt_tokens: int, write) -> web.StreamResponse:
    """Server-sent events; the response starts with the first token, so that bad input still gets a 400.
    `write(response, bytes)`: the response's write, bounded by the stall timeout."""
    response = None
    try:
        async for index, event in events:
            piece = choices[index].take(event)
            if piece is None:
                continue  # a choice a stop string ended: tokens already on their way
            if response is None:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream",
                                                       "Cache-Control": "no-cache"})
                await response.prepare(request)
                if request.transport is not None:
                    bound_stream_buffers(request.transport)
                if endpoint.opening_choice is not None:
                    for c in choices:
                        await write(response, _event(header.envelope(endpoint.chunk_object,
                                                                     [endpoint.opening_choice(c.index)])))
            delta = endpoint.delta(index, piece.text, piece.token_ids, piece.finish_reason, piece.logprobs)
            await write(response, _event(header.envelope(endpoint.chunk_object, [delta])))
            if piece.cut:
                streams.finish(index)
                if all(c.finish_reason for c in choices):
                    break
        if req.include_usage:
            usage = usage_body(prompt_tokens, sum(len(c.token_ids) for c in choices))
            await write(response, _event(header.envelope(endpoint.chunk_object, [], usage=usage)))
        await write(response, b"data: [DONE]\n\n")
    except GenerationFailed as exc:
        if response is None:
            raise  # nothing sent yet: a plain error response
        await write(response, _event(error_body(str(exc), error_type="server_error", code=exc.code)))
    except ConnectionResetError:  # the client left; leaving the loop aborts the generation
        log.info("client closed the stream of %s", header.id)
        return response
    except ClientStalled:  # leaving the loop aborts the generation; the connection goes too
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _json_body(request: web.Request):
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:  # also invalid UTF-8
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
