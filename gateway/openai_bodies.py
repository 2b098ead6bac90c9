"""The OpenAI API's response shapes as pure functions: bodies, stream chunks, choices, logprobs, errors."""

from __future__ import annotations

from dataclasses import dataclass

from eaas.engine.logprobs import TokenLogprobs
from eaas.gateway.token_strings import TokenStrings

LOWEST_LOGPROB = -9999.0  # JSON has no -inf: vLLM clamps to this too


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


# --- choices: (index, text, token_ids, finish_reason, logprobs) -> dict ---------------------------------
# token_ids is our extension: the exact generated ids, which text cannot always round-trip.
def completion_choice(index: int, text: str, token_ids: list[int], finish_reason: str | None,
                      logprobs: dict | None = None) -> dict:
    return {"index": index, "text": text, "finish_reason": finish_reason, "logprobs": logprobs,
            "token_ids": token_ids}


def chat_choice(index: int, text: str, token_ids: list[int], finish_reason: str | None,
                logprobs: dict | None = None) -> dict:
    return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason,
            "logprobs": logprobs, "token_ids": token_ids}


def chat_delta_choice(index: int, text: str, token_ids: list[int], finish_reason: str | None,
                      logprobs: dict | None = None) -> dict:
    return {"index": index, "delta": {"content": text} if text else {}, "finish_reason": finish_reason,
            "logprobs": logprobs, "token_ids": token_ids}


def chat_role_choice(index: int) -> dict:
    """Each choice's first chunk in a chat stream: who speaks, before any content."""
    return {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
            "logprobs": None, "token_ids": []}


# --- logprobs ---------------------------------------------------------------------------------------
def _lp(x: float) -> float:
    return max(x, LOWEST_LOGPROB)


class CompletionLogprobs:
    """/v1/completions' `{tokens, token_logprobs, top_logprobs, text_offset}`, piece by piece; text_offset
    runs on across pieces (the offset of each token's text in the choice's whole text)."""

    def __init__(self, strings: TokenStrings):
        self.strings = strings
        self.offset = 0

    def piece(self, token_ids: list[int], entries: list[TokenLogprobs | None]) -> dict:
        tokens = [self.strings.text(t) for t in token_ids]
        offsets = []
        for t in tokens:
            offsets.append(self.offset)
            self.offset += len(t)
        return {"tokens": tokens, "token_logprobs": [None if e is None else _lp(e.logprob) for e in entries],
                "top_logprobs": [None if e is None else self._top(e) for e in entries], "text_offset": offsets}

    def _top(self, e: TokenLogprobs) -> dict[str, float]:
        """The k most likely tokens and the chosen one (vLLM's form: k + 1 entries when it is not among them).
        Tokens whose texts are equal (pieces of characters) share a key: the likeliest keeps it."""
        top: dict[str, float] = {}
        for t, lp in [*e.top, (e.token_id, e.logprob)]:
            top.setdefault(self.strings.text(t), _lp(lp))
        return top

    @staticmethod
    def join(pieces: list[dict]) -> dict:
        return {key: [x for p in pieces for x in p[key]] for key in ("tokens", "token_logprobs", "top_logprobs",
                                                                      "text_offset")}


class ChatLogprobs:
    """/v1/chat/completions' `{content: [{token, logprob, bytes, top_logprobs: [{token, logprob, bytes}]}]}`."""

    def __init__(self, strings: TokenStrings):
        self.strings = strings

    def piece(self, token_ids: list[int], entries: list[TokenLogprobs]) -> dict:
        return {"content": [{**self._item(e.token_id, e.logprob),
                             "top_logprobs": [self._item(t, lp) for t, lp in e.top]} for e in entries]}

    def _item(self, token_id: int, logprob: float) -> dict:
        return {"token": self.strings.text(token_id), "logprob": _lp(logprob), "bytes": self.strings.bytes(token_id)}

    @staticmethod
    def join(pieces: list[dict]) -> dict:
        return {"content": [x for p in pieces for x in p["content"]]}
