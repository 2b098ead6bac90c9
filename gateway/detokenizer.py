"""Incremental detokenization: the text each new token adds, without re-decoding the whole output.

Decodes only a short window (from `prefix_offset`) and emits what goes past the text already sent; a
window ending inside a multi-byte character (U+FFFD) waits for the next token (vLLM's method).
"""

from __future__ import annotations


class IncrementalDetokenizer:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.prefix_offset = 0   # window start: tokens before it are settled text
        self.read_offset = 0     # tokens whose text has been emitted

    def step(self, ids: list[int], final: bool = False) -> str:
        """Text added by ids[read_offset:]; `ids` is the whole output so far."""
        return self._step(ids, len(ids), final)

    def replay(self, ids: list[int]) -> list[str]:
        """Step through ids one token at a time, as a stream of them was detokenized, and return each
        token's text. A stream resumed on another gateway replays the tokens the client already has, so its
        next pieces are what the first gateway's would have been (a character split across the switch
        comes out whole, not as U+FFFD)."""
        return [self._step(ids, end, False) for end in range(self.read_offset + 1, len(ids) + 1)]

    def _step(self, ids: list[int], end: int, final: bool) -> str:
        """step() for the output ids[:end], without copying it."""
        if self.tokenizer is None:
            return ""
        decode = self.tokenizer.decode
        prefix = decode(ids[self.prefix_offset:self.read_offset], skip_special_tokens=True)
        full = decode(ids[self.prefix_offset:end], skip_special_tokens=True)
        if full.endswith("\ufffd") and not final:
            return ""  # a character split across tokens: wait for its remaining bytes
        new = full[len(prefix):] if full.startswith(prefix) else full
        self.prefix_offset, self.read_offset = self.read_offset, end
        return new
