"""The gateway's API-key checks: an aiohttp middleware (401, OpenAI's error shape) and a grpc.aio
server interceptor (UNAUTHENTICATED). Health and /metrics stay open."""

from __future__ import annotations

import grpc
from aiohttp import web

from eaas.auth import OPEN_GRPC_METHODS, OPEN_HTTP_PATHS, ApiKeyFile, authorized, key_getter
from eaas.gateway.openai_bodies import error_body

UNAUTHORIZED_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"


def http_api_key_middleware(key: str | ApiKeyFile):
    """key: a fixed key, or an ApiKeyFile whose key in force is read per request (rotation, no restart)."""
    current = key_getter(key)

    @web.middleware
    async def require_api_key(request: web.Request, handler):
        if request.path in OPEN_HTTP_PATHS or authorized(request.headers.get("Authorization"), current()):
            return await handler(request)
        return web.json_response(error_body(UNAUTHORIZED_MESSAGE, code="invalid_api_key"), status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="eaas"'})
    return require_api_key


def _metadata_value(metadata, name: str) -> str | None:
    for k, v in metadata or ():
        if k == name:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else v
    return None


def _refusal(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` that answers UNAUTHENTICATED before running anything."""
    async def unary(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED_MESSAGE)

    async def streaming(request, context):
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, UNAUTHORIZED_MESSAGE)
        yield  # pragma: no cover - makes this an async generator

    codec = dict(request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer)
    if handler.request_streaming and handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(streaming, **codec)
    if handler.request_streaming:
        return grpc.stream_unary_rpc_method_handler(unary, **codec)
    if handler.response_streaming:
        return grpc.unary_stream_rpc_method_handler(streaming, **codec)
    return grpc.unary_unary_rpc_method_handler(unary, **codec)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but health needs metadata `authorization: Bearer <key>`."""

    def __init__(self, key: str | ApiKeyFile):
        self.current = key_getter(key)  # per call: a rotated key file takes effect on the next RPC

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method in OPEN_GRPC_METHODS:
            return handler
        if authorized(_metadata_value(handler_call_details.invocation_metadata, "authorization"), self.current()):
            return handler
        return _refusal(handler)


def grpc_interceptors(key: str | ApiKeyFile | None) -> list:
    return [ApiKeyInterceptor(key)] if key else []
