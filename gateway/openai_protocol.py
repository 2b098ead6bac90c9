"""The OpenAI API's wire format as pure functions: request bodies -> validated requests, stop strings, bodies.

Nothing here does I/O: the HTTP handlers in openai_http.py parse with these functions, run the engine and
format what it produced with them, so every rule of the wire format is unit-testable without a server.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

from eaas.engine.sequence import MAX_LOGPROBS, InvalidParam, SamplingParams

DEFAULT_MAX_TOKENS = 16     # OpenAI's default for /v1/completions
DEFAULT_TEMPERATURE = 1.0   # OpenAI's default; our greedy decoding is temperature 0
MAX_SEED = 2**64 - 1        # the range torch.Generator.manual_seed accepts
MAX_N = 128                 # choices per request (OpenAI's limit)

# Known OpenAI fields we do not implement: a value other than "off" (falsy) is refused rather than silently
# ignored, because ignoring it would change what the client gets.
_UNSUPPORTED_COMPLETION = ("suffix", "logit_bias", "tools")
_UNSUPPORTED_CHAT = ("echo", "logit_bias", "tools")  # echo is a vLLM extension of chat


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
    n: int = 1                                  # choices: n generations of the same prompt
    echo: bool = False                          # /v1/completions: the prompt leads each choice's text (and logprobs)

    def sampling_params(self, prompt_len: int, context_len: int) -> SamplingParams:
        """The engine's parameters for a prompt of prompt_len tokens in a model of context_len positions;
        raises InvalidRequest for values out of range."""
        params = self.params
        if self.fill_context:
            params = replace(params, max_tokens=max(1, context_len - prompt_len))
        try:
            params.validate()
        except InvalidParam as exc:
            raise InvalidRequest(str(exc), exc.param) from None
        return params

    def choice_params(self, params: SamplingParams) -> list[SamplingParams]:
        """Each choice's parameters: a seeded request gives choice i the seed + i (as vLLM), so choices differ
        and repeat; only the first scores the prompt (the others share its prompt KV through the prefix cache)."""
        out = [params]
        for i in range(1, self.n):
            seed = None if params.seed is None else (params.seed + i) % (MAX_SEED + 1)
            out.append(replace(params, seed=seed, prompt_logprobs=None))
        return out


def parse_completion_request(body) -> ParsedRequest:
    """Validate a /v1/completions body. One prompt per request: a list of several prompts is refused."""
    body = _require_object(body, _UNSUPPORTED_COMPLETION)
    logprobs = _optional_int(body, "logprobs", minimum=0)
    echo = body.get("echo") or False
    if not isinstance(echo, bool):
        raise InvalidRequest("echo must be a boolean", "echo")
    params, fill_context = _sampling_params(body, default_max_tokens=DEFAULT_MAX_TOKENS, logprobs=logprobs,
                                            prompt_logprobs=logprobs if echo else None)
    return ParsedRequest(_model(body), params, fill_context, _stop(body), *_stream(body),
                         prompt=_prompt(body.get("prompt")), n=_n(body), echo=echo)


def parse_chat_request(body) -> ParsedRequest:
    """Validate a /v1/chat/completions body; without max_tokens the reply may fill the rest of the context."""
    body = _require_object(body, _UNSUPPORTED_CHAT)
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is not None:
        body = {**body, "max_tokens": body["max_completion_tokens"]}  # the newer name of the same limit
    params, fill_context = _sampling_params(body, default_max_tokens=None, logprobs=_chat_logprobs(body))
    return ParsedRequest(_model(body), params, fill_context, _stop(body), *_stream(body),
                         messages=_messages(body.get("messages")), n=_n(body))


# --- fields -------------------------------------------------------------------------------------------
def _require_object(body, unsupported: tuple[str, ...]) -> dict:
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    for name in unsupported:
        if body.get(name):
            raise InvalidRequest(f"{name}={json.dumps(body[name])} is not supported by this server", name)
    return body


def _n(body: dict) -> int:
    """n, and best_of as vLLM's V1 engine takes it: equal to n at most (no server-side ranking)."""
    n = _optional_int(body, "n", minimum=1) or 1
    if n > MAX_N:
        raise InvalidRequest(f"n must be at most {MAX_N}, got {n}", "n")
    best_of = _optional_int(body, "best_of", minimum=1)
    if best_of is not None and best_of < n:
        raise InvalidRequest(f"best_of must be >= n ({n}), got {best_of}", "best_of")
    if best_of is not None and best_of > n:
        raise InvalidRequest(f"best_of > n is not supported by this server (it does not rank candidates): "
                             f"got best_of={best_of}, n={n}", "best_of")
    return n


def _chat_logprobs(body: dict) -> int | None:
    """Chat's `logprobs: true` + `top_logprobs: k` -> the top alternatives per token, or None (no logprobs)."""
    wanted = body.get("logprobs") or False
    if not isinstance(wanted, bool):
        raise InvalidRequest("logprobs must be a boolean", "logprobs")
    top = _optional_int(body, "top_logprobs", minimum=0)
    if top is not None and top > MAX_LOGPROBS:
        raise InvalidRequest(f"top_logprobs must be in [0, {MAX_LOGPROBS}], got {top}", "top_logprobs")
    if top is not None and not wanted:
        raise InvalidRequest("top_logprobs needs logprobs: true", "top_logprobs")
    return (top or 0) if wanted else None


def _model(body: dict) -> str | None:
    model = body.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidRequest("model must be a string", "model")
    return model


def _sampling_params(body: dict, default_max_tokens: int | None, logprobs: int | None = None,
                     prompt_logprobs: int | None = None) -> tuple[SamplingParams, bool]:
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
                            top_p=top_p, seed=seed, stop_token_ids=tuple(stop_token_ids), ignore_eos=ignore_eos,
                            presence_penalty=_optional_number(body, "presence_penalty", 0.0),
                            frequency_penalty=_optional_number(body, "frequency_penalty", 0.0),
                            repetition_penalty=_optional_number(body, "repetition_penalty", 1.0),
                            min_tokens=_optional_int(body, "min_tokens", minimum=0) or 0,
                            logprobs=logprobs, prompt_logprobs=prompt_logprobs)
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

    def next_piece(self, text: str, finish_reason: str | None, armed: bool = True) -> tuple[str, str | None]:
        """(text to send, finish reason) for one engine event: "stop" at a stop string, else the engine's.
        armed=False: stop strings do not apply yet (before min_tokens tokens, as vLLM)."""
        if not armed:
            return text, finish_reason
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
