"""One choice of an OpenAI response, built as its token events arrive: the text cut at stop strings (not
before min_tokens tokens), the ids, the logprobs, the finish reason, and the echoed prompt when asked."""

from __future__ import annotations

from dataclasses import dataclass, field

from eaas.gateway.engine_service import TokenEvent
from eaas.gateway.openai_bodies import ChatLogprobs, CompletionLogprobs
from eaas.gateway.openai_protocol import StopStringCutter


@dataclass
class Echo:
    """The prompt that leads every choice of a completion with echo: its text, ids and (with logprobs) the
    entries of its tokens, which the first choice's first event brings (the first token's is None)."""
    text: str
    token_ids: list[int]
    entries: list | None = None


@dataclass(frozen=True)
class Piece:
    """What one event adds to its choice."""
    text: str
    token_ids: list[int]
    logprobs: dict | None
    finish_reason: str | None
    cut: bool  # a stop string ended the choice before the engine did: the caller ends its generation


@dataclass
class ChoiceBuilder:
    index: int
    cutter: StopStringCutter
    min_tokens: int = 0
    logprobs: CompletionLogprobs | ChatLogprobs | None = None  # None: the request asked for no logprobs
    echo: Echo | None = None
    texts: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprob_pieces: list[dict] = field(default_factory=list)
    finish_reason: str | None = None

    def take(self, event: TokenEvent) -> Piece | None:
        """The piece to send for this event; None once the choice has ended (a stop string cut it)."""
        if self.finish_reason is not None:
            return None
        if event.prompt_logprobs is not None and self.echo is not None:
            self.echo.entries = event.prompt_logprobs
        armed = event.index + len(event.token_ids) > self.min_tokens
        text, finish_reason = self.cutter.next_piece(event.text, event.finish_reason, armed)
        ids, entries = event.token_ids, event.logprobs or []
        if self.echo is not None and not self.token_ids:  # the choice's first piece carries the prompt
            text = self.echo.text + text
            ids, entries = self.echo.token_ids + ids, (self.echo.entries or []) + entries
        logprobs = self.logprobs.piece(ids, entries) if self.logprobs is not None else None
        self.texts.append(text)
        self.token_ids.extend(event.token_ids)
        if logprobs is not None:
            self.logprob_pieces.append(logprobs)
        self.finish_reason = finish_reason
        return Piece(text, event.token_ids, logprobs, finish_reason,
                     cut=finish_reason is not None and event.finish_reason is None)

    def whole(self, make_choice) -> dict:
        """The choice in a non-streamed body: make_choice(index, text, token_ids, finish_reason, logprobs)."""
        logprobs = self.logprobs.join(self.logprob_pieces) if self.logprobs is not None else None
        return make_choice(self.index, "".join(self.texts), self.token_ids, self.finish_reason, logprobs)
