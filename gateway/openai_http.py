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

from eaas.engine.llm_engine import RequestError
from eaas.gateway.auth import http_api_key_middleware
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S, ClientStalled, bound_stream_buffers, write_or_stall
from eaas.gateway.engine_service import EngineService, GenerationFailed, QueueFull, TokenEvent, TokenStream
from eaas.gateway.openai_protocol import (
    InvalidRequest,
    ParsedRequest,
    ResponseHeader,
    StopStringCutter,
    chat_body,
    chat_chunk,
    chat_role_chunk,
    completion_body,
    completion_chunk,
    error_body,
    models_body,
    parse_chat_request,
    parse_completion_request,
    usage_body,
    usage_chunk,
)

log = logging.getLogger("eaas.gateway.http")
MAX_BODY_BYTES = 4 << 20  # a larger body is refused with 413: room for a 128k-token prompt as an id list


class ModelNotFound(LookupError):
    """The request names a model this gateway does not serve."""


class ClientGone(Exception):
    """The client closed its connection: stop generating for it."""


@dataclass(frozen=True)
class Endpoint:
    """How one generation endpoint shapes its ids, bodies and stream chunks."""
    id_prefix: str
    chunk_object: str
    body: Callable[..., dict]           # (header, text, token_ids, finish_reason, usage) -> dict
    chunk: Callable[..., dict]          # (header, text, token_ids, finish_reason) -> dict
    opening_chunks: Callable[[ResponseHeader], list[dict]]


COMPLETIONS = Endpoint("cmpl", "text_completion", completion_body, completion_chunk, lambda h: [])
CHAT = Endpoint("chatcmpl", "chat.completion.chunk", chat_body, chat_chunk, lambda h: [chat_role_chunk(h)])


def build_http_app(service: EngineService, model_name: str, api_key: str | None = None,
                   stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S) -> web.Application:
    """api_key: every route but /health and /metrics needs `Authorization: Bearer <api_key>`.
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
        return _error(400, str(exc))
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
        return await self._generate(request, req, prompt_ids, COMPLETIONS)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = parse_chat_request(await _json_body(request))
        self._check_model(req.model)
        prompt_ids = chat_prompt_ids(self.service.tokenizer, req.messages)
        return await self._generate(request, req, prompt_ids, CHAT)

    def _check_model(self, model: str | None) -> None:
        if model is not None and model != self.model_name:
            raise ModelNotFound(f"the model {model!r} does not exist here: this gateway serves {self.model_name!r}")

    async def _generate(self, request: web.Request, req: ParsedRequest, prompt_ids: list[int],
                        endpoint: Endpoint) -> web.StreamResponse:
        header = ResponseHeader(f"{endpoint.id_prefix}-{uuid.uuid4().hex}", int(time.time()), self.model_name)
        params = req.sampling_params(len(prompt_ids), self.service.engine.model.max_positions)
        # Closing the event stream aborts its generation: on a stop string, an error or a client that left.
        async with contextlib.aclosing(self.service.generate(prompt_ids, params, header.id)) as events:
            if req.stream:
                response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})

                def write(data: bytes):
                    return write_or_stall(response.write(data), self.stall_timeout_s, self.service.metrics, "http",
                                          header.id)
                return await _stream(request, response, write, events, req, header, endpoint, len(prompt_ids))
            return await _collect(request, events, req, header, endpoint, len(prompt_ids))


async def _collect(request: web.Request, events: TokenStream, req: ParsedRequest, header: ResponseHeader, endpoint: Endpoint,
                   prompt_tokens: int) -> web.Response:
    cutter = StopStringCutter(req.stop)
    texts, token_ids, finish_reason = [], [], None
    async for event in events:
        text, finish_reason = cutter.next_piece(event.text, event.finish_reason)
        texts.append(text)
        token_ids.extend(event.token_ids)
        if _cut_by_stop_string(finish_reason, event):
            events.finish()  # a normal end (counted "ok"): the rest is not generated
            break
        if request.transport is None or request.transport.is_closing():
            raise ClientGone()
    usage = usage_body(prompt_tokens, len(token_ids))
    return web.json_response(endpoint.body(header, "".join(texts), token_ids, finish_reason, usage))


async def _stream(request: web.Request, response: web.StreamResponse, write, events: TokenStream,
                  req: ParsedRequest, header: ResponseHeader, endpoint: Endpoint,
                  prompt_tokens: int) -> web.StreamResponse:
    """Server-sent events; the response starts with the first token, so that bad input still gets a 400.
    `write(bytes)`: the response's write, bounded by the stall timeout."""
    cutter = StopStringCutter(req.stop)
    completion_tokens = 0
    try:
        async for event in events:
            text, finish_reason = cutter.next_piece(event.text, event.finish_reason)
            completion_tokens += len(event.token_ids)
            if not response.prepared:
                await response.prepare(request)
                if request.transport is not None:
                    bound_stream_buffers(request.transport)
                for chunk in endpoint.opening_chunks(header):
                    await write(_event(chunk))
            await write(_event(endpoint.chunk(header, text, event.token_ids, finish_reason)))
            if _cut_by_stop_string(finish_reason, event):
                events.finish()
                break
        if req.include_usage:
            await write(_event(usage_chunk(header, endpoint.chunk_object, usage_body(prompt_tokens, completion_tokens))))
        await write(b"data: [DONE]\n\n")
    except GenerationFailed as exc:
        if not response.prepared:
            raise  # nothing sent yet: a plain error response
        await write(_event(error_body(str(exc), error_type="server_error", code=exc.code)))
    except ConnectionResetError:  # the client left; leaving the loop aborts the generation
        log.info("client closed the stream of %s", header.id)
        return response
    except ClientStalled:  # leaving the loop aborts the generation; the connection goes too
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response


def _cut_by_stop_string(finish_reason: str | None, event: TokenEvent) -> bool:
    # Only a stop string ends the loop early (finish() ends the rest, counted "ok"); after the engine's
    # own last event the loop runs on, so that the service sees the request complete.
    return finish_reason is not None and event.finish_reason is None


def _event(payload: dict) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _json_body(request: web.Request):
    raw = await request.read()
    try:
        return json.loads(raw)
    except ValueError as exc:  # also invalid UTF-8
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None
