"""The gateway's gRPC API: `Gateway.Generate` streams tokens from the EngineService."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import grpc

from eaas.engine.llm_engine import RequestError
from eaas.engine.sequence import SamplingParams
from eaas.gateway.engine_service import EngineService, GenerationFailed
from eaas.gateway.openai_protocol import StopStringCutter
from eaas.gateway.stall import DEFAULT_STALL_TIMEOUT_S, ClientStalled, write_or_stall
from eaas.protos import gateway_pb2, gateway_pb2_grpc

DEFAULT_MAX_TOKENS = 16
_CODES = {"unavailable": grpc.StatusCode.UNAVAILABLE, "invalid_argument": grpc.StatusCode.INVALID_ARGUMENT,
          "deadline_exceeded": grpc.StatusCode.DEADLINE_EXCEEDED,
          "resource_exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED}


def sampling_params(req: gateway_pb2.GenerateRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=req.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=req.temperature if req.HasField("temperature") else 0.0,
        top_p=req.top_p if req.HasField("top_p") else 1.0,
        seed=req.seed if req.HasField("seed") else None,
        stop_token_ids=tuple(req.stop_token_ids),
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty if req.HasField("presence_penalty") else 0.0,
        frequency_penalty=req.frequency_penalty if req.HasField("frequency_penalty") else 0.0,
        repetition_penalty=req.repetition_penalty if req.HasField("repetition_penalty") else 1.0,
        min_tokens=req.min_tokens,
        logprobs=req.logprobs if req.HasField("logprobs") else None,
    )


def stop_strings(req: gateway_pb2.GenerateRequest) -> tuple[str, ...]:
    return checked_stop_strings(req.stop)


def checked_stop_strings(stops) -> tuple[str, ...]:
    """The stop strings as given, or RequestError: an empty one would match before every character."""
    if any(not s for s in stops):
        raise RequestError("stop strings must be non-empty")
    return tuple(stops)


def resumed_stop_cutter(stops: tuple[str, ...], resumed_texts: list[str], min_tokens: int) -> StopStringCutter:
    """The stop-string cutter as the gateway that streamed the resumed tokens left it: fed the text of those
    past min_tokens, holding back a tail that may start a stop string, so that one straddling the switch
    to this gateway still ends the text there."""
    cutter = StopStringCutter(stops)
    for i, text in enumerate(resumed_texts):
        if i + 1 > min_tokens and cutter.feed(text)[1]:
            raise RequestError("resume_token_ids already reach a stop string: that stream had ended")
    return cutter


def logprobs_message(entries: list | None) -> list[gateway_pb2.TokenLogprob]:
    return [gateway_pb2.TokenLogprob(token_id=e.token_id, logprob=e.logprob, top_ids=[t for t, _ in e.top],
                                     top_logprobs=[lp for _, lp in e.top]) for e in entries or []]


class GatewayServicer(gateway_pb2_grpc.GatewayServicer):
    def __init__(self, service: EngineService, model_name: str, info: Callable[[], gateway_pb2.GatewayInfo],
                 stall_timeout_s: float = DEFAULT_STALL_TIMEOUT_S):
        self.service = service
        self.model_name = model_name
        self.info = info  # called per Info request: the replica table changes while serving
        self.stall_timeout_s = stall_timeout_s  # a stream whose client reads nothing this long is aborted

    async def Generate(self, request, context):
        # context.write, not yield: a write the client never drains must be bounded (gateway/stall.py)
        try:
            if request.prompt_ids:
                prompt_ids = list(request.prompt_ids)
            elif request.HasField("prompt"):
                prompt_ids = self.service.encode(request.prompt)
            else:
                raise RequestError("empty request: give prompt_ids or prompt")
            params = sampling_params(request)
            stops = stop_strings(request)
            self.service.check_stop_strings(stops)
            resumed = list(request.resume_token_ids)
            cutter = resumed_stop_cutter(stops, self.service.resumed_texts(resumed) if stops and resumed else [],
                                         params.min_tokens)
            events = self.service.generate(prompt_ids, params, request.request_id,
                                           resume_ids=resumed)
            async with contextlib.aclosing(events):  # a client that leaves ends its generation
                async for event in events:
                    armed = event.index + len(event.token_ids) > params.min_tokens
                    text, finish_reason = cutter.next_piece(event.text, event.finish_reason, armed)
                    reply = gateway_pb2.GenerateResponse(token_ids=event.token_ids, text=text,
                                                         finish_reason=finish_reason or "", index=event.index,
                                                         logprobs=logprobs_message(event.logprobs))
                    await write_or_stall(context.write(reply), self.stall_timeout_s, self.service.metrics, "grpc",
                                         request.request_id)
                    if finish_reason is not None and event.finish_reason is None:
                        events.finish()  # a stop string ended it: generate no more, counted "ok"
                        break
        except ClientStalled as exc:  # leaving the loop above aborted the generation
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, str(exc))
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except GenerationFailed as exc:
            await context.abort(_CODES.get(exc.code, grpc.StatusCode.INTERNAL), str(exc))

    async def Info(self, request, context):
        return self.info()
