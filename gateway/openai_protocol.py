"""The OpenAI API's wire format as pure functions: request bodies -> validated requests, stop strings, bodies.

Nothing here does I/O: the HTTP handlers in openai_http.py parse with these functions, run the engine and
format what it produced with them, so every rule of the wire format is unit-testable without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from eaas.engine.sequence import SamplingParams

DEFAULT_MAX_TOKENS = 16     # OpenAI's default for /v1/completions
DEFAULT_TEMPERATURE = 1.0   # OpenAI's default; our greedy decoding is temperature 0
MAX_SEED = 2**64 - 1        # the range torch.Generator.manual_seed accepts

# Known OpenAI fields we do not implement: a value other than "off" is refused rather than silently
# ignored, because ignoring it would change what the client gets. "Off" is 1 for the counts, else falsy.
_UNSUPPORTED_COUNTS = ("n", "best_of")
_UNSUPPORTED_FLAGS = ("echo", "suffix", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
                      "logit_bias", "tools")


class InvalidRequest(ValueError):
    """A request body that breaks the API's rules; `param` names the offending field (OpenAI's error shape)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class ParsedRequest:
    """A validated /v1/completions or /v1/chat/completions body."""
    model: str | None                   # None: the client named no model (we serve only one)
    params: SamplingParams              # max_tokens is a placeholder when fill_context is set
    fill_context: bool                  # chat without max_tokens: may generate up to the end of the context
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool                 # stream_options.include_usage: a last chunk carries the usage
    prompt: str | list[int] | None = None       # /v1/completions: text, or token ids
    messages: list[dict] | None = None          # /v1/chat/completions: [{"role", "content"}] with text content

    def sampling_params(self, prompt_len: int, context_len: int) -> SamplingParams:
        """The engine's parameters for a prompt of prompt_len tokens in a model of context_len positions."""
        if not self.fill_context:
            return self.params
        return replace(self.params, max_tokens=max(1, context_len - prompt_len))


def parse_completion_request(body) -> ParsedRequest:
    """Validate a /v1/completions body. One prompt per request: a list of several prompts is refused."""
    body = _require_object(body)
    params, fill_context = _sampling_params(body, default_max_tokens=DEFAULT_MAX_TOKENS)
    return ParsedRequest(_model(body), params, fill_context, _stop(body), *_stream(body),
                         prompt=_prompt(body.get("prompt")))


def parse_chat_request(body) -> ParsedRequest:
    """Validate a /v1/chat/completions body; without max_tokens the reply may fill the rest of the context."""
    body = _require_object(body)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}  # the newer name of the same limit
    params, fill_context = _sampling_params(body, default_max_tokens=None)
    return ParsedRequest(_model(body), params, fill_context, _stop(body), *_stream(body),
                         messages=_messages(body.get("messages")))


# --- fields -------------------------------------------------------------------------------------------
def _require_object(body) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in _UNSUPPORTED_COUNTS + _UNSUPPORTED_FLAGS:
        value = body.get(name)
        if name in _UNSUPPORTED_COUNTS:
            off = value is None or (_is_int(value) and value == 1)
        else:
            off = not value
        if not off:
            raise InvalidRequest(f"{name}={json.dumps(value)} is not supported by this server", name)
    return body


def _model(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string", "model")
    return model


def _sampling_params(body: dict, default_max_tokens: int | None) -> tuple[SamplingParams, bool]:
    max_tokens = _optional_int(body, "max_tokens", minimum=1)
    fill_context = max_tokens is None and default_max_tokens is None
    temperature = _optional_number(body, "temperature", DEFAULT_TEMPERATURE)
    if temperature < 0:
        raise InvalidRequest(f"temperature must be >= 0, got {temperature}", "temperature")
    top_p = _optional_number(body, "top_p", 1.0)
    if not 0 < top_p <= 1:
        raise InvalidRequest(f"top_p must be in (0, 1], got {top_p}", "top_p")
    seed = _optional_int(body, "seed", minimum=0)
    if seed is not None and seed > MAX_SEED:
        raise InvalidRequest(f"seed must be at most {MAX_SEED}", "seed")
    stop_token_ids = body.get("stop_token_ids") or []
    if not isinstance(stop_token_ids, list) or not all(_is_int(t) and t >= 0 for t in stop_token_ids):
        raise InvalidRequest("stop_token_ids must be a list of non-negative token ids", "stop_token_ids")
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise InvalidRequest("ignore_eos must be a boolean", "ignore_eos")
    params = SamplingParams(max_tokens=max_tokens or default_max_tokens or 1, temperature=temperature,
                            top_p=top_p, seed=seed, stop_token_ids=tuple(stop_token_ids), ignore_eos=ignore_eos)
    return params, fill_context


def _stop(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) and s for s in stops):
        raise InvalidRequest("stop must be a non-empty string or a list of non-empty strings", "stop")
    return tuple(stops)


def _stream(body: dict) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("stream must be a boolean", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise InvalidRequest("stream_options must be an object with a boolean include_usage", "stream_options")
    return stream, stream and options.get("include_usage", False)


def _prompt(prompt) -> str | list[int]:
    """A text or a token-id list; a list holding exactly one of those is unwrapped."""
    if isinstance(prompt, list) and prompt and all(isinstance(p, (str, list)) for p in prompt):
        if len(prompt) > 1:
            raise InvalidRequest(f"only one prompt per request is supported, got {len(prompt)}: send one "
                                 "request per prompt", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and all(_is_int(t) for t in prompt):
        if not prompt:
            raise InvalidRequest("prompt must not be empty", "prompt")
        return list(prompt)
    raise InvalidRequest("prompt must be a string or a list of token ids", "prompt")


def _messages(messages) -> list[dict]:
    """The chat as [{"role", "content"}] with text content; text parts of a content list are joined."""
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("messages must be a non-empty list of {role, content} objects", "messages")
    chat = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise InvalidRequest(f"messages[{i}] must be an object with a string role", "messages")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise InvalidRequest(f"messages[{i}].content: only text parts are supported", "messages")
            content = "\n".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise InvalidRequest(f"messages[{i}].content must be a string or a list of text parts", "messages")
        chat.append({"role": m["role"], "content": content})
    return chat


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _optional_int(body: dict, name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if not _is_int(value):
        raise InvalidRequest(f"{name} must be an integer", name)
    if value < minimum:
        raise InvalidRequest(f"{name} must be >= {minimum}, got {value}", name)
    return value


def _optional_number(body: dict, name: str, default: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"{name} must be a finite number", name)
    try:
        number = float(value)  # an integer of 400 digits overflows a float (found by fuzzing)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise InvalidRequest(f"{name} must be a finite number", name)
    return number


# --- stop strings -------------------------------------------------------------------------------------
class StopStringCutter:
    """Ends a text stream at the first stop string, holding back a tail that may be the start of one."""

    def __init__(self, stops: tuple[str, ...]):
        self.stops = stops
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text safe to send now, whether a stop string was reached); the stop string itself is not sent."""
        pending = self._held + text
        hits = [i for i in (pending.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._held = ""
            return pending[:min(hits)], True
        hold = self._partial_stop_len(pending)
        self._held = pending[len(pending) - hold:] if hold else ""
        return pending[:len(pending) - hold], False

    def flush(self) -> str:
        """The held-back tail, once the stream ended without reaching a stop string."""
        held, self._held = self._held, ""
        return held

    def next_piece(self, text: str, finish_reason: str | None) -> tuple[str, str | None]:
        """(text to send, finish reason) for one engine event: "stop" at a stop string, else the engine's."""
        text, stopped = self.feed(text)
        if stopped:
            return text, "stop"
        if finish_reason:
            text += self.flush()
        return text, finish_reason

    def _partial_stop_len(self, text: str) -> int:
        """Length of the longest suffix of text that is a proper prefix of some stop string."""
        longest = max((len(s) for s in self.stops), default=1) - 1
        for n in range(min(longest, len(text)), 0, -1):
            if any(s.startswith(text[-n:]) for s in self.stops):
                return n
        return 0


# --- response bodies ----------------------------------------------------------------------------------
def error_body(message: str, param: str | None = None, error_type: str = "invalid_request_error",
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def usage_body(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def models_body(model_name: str, created: int) -> dict:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created,
                                        "owned_by": "eaas"}]}


@dataclass(frozen=True)
class ResponseHeader:
    """What every body and chunk of one response repeats."""
    id: str
    created: int
    model: str

    def envelope(self, object_name: str, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model,
                "choices": choices, **extra}


def _choice(token_ids: list[int], finish_reason: str | None, **content) -> dict:
    # token_ids is our extension: the exact generated ids, which text cannot always round-trip
    return {"index": 0, **content, "finish_reason": finish_reason, "logprobs": None, "token_ids": token_ids}


def completion_body(h: ResponseHeader, text: str, token_ids: list[int], finish_reason: str | None,
                    usage: dict) -> dict:
    return h.envelope("text_completion", [_choice(token_ids, finish_reason, text=text)], usage=usage)


def completion_chunk(h: ResponseHeader, text: str, token_ids: list[int], finish_reason: str | None) -> dict:
    return h.envelope("text_completion", [_choice(token_ids, finish_reason, text=text)])


def chat_body(h: ResponseHeader, text: str, token_ids: list[int], finish_reason: str | None, usage: dict) -> dict:
    message = {"role": "assistant", "content": text}
    return h.envelope("chat.completion", [_choice(token_ids, finish_reason, message=message)], usage=usage)


def chat_chunk(h: ResponseHeader, text: str, token_ids: list[int], finish_reason: str | None) -> dict:
    delta = {"content": text} if text else {}
    return h.envelope("chat.completion.chunk", [_choice(token_ids, finish_reason, delta=delta)])


def chat_role_chunk(h: ResponseHeader) -> dict:
    """The first chunk of a chat stream: who speaks, before any content."""
    return h.envelope("chat.completion.chunk", [_choice([], None, delta={"role": "assistant", "content": ""})])


def usage_chunk(h: ResponseHeader, object_name: str, usage: dict) -> dict:
    """The last chunk of a stream with stream_options.include_usage: no choices, the usage."""
    return h.envelope(object_name, [], usage=usage)
