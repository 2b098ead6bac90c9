"""Each token's text and bytes as the logprobs formats show them (OpenAI's `token` and `bytes`).

A token's text is what decoding it alone gives (a byte-level token that is part of a multi-byte character
decodes to U+FFFD, as in vLLM); its bytes are the token's real bytes, so that a client can join them
into the exact text. Without a tokenizer a token shows as `token_id:<id>` (vLLM's
return_tokens_as_token_ids form) with no bytes.
"""

from __future__ import annotations

import re

_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # sentencepiece's byte tokens


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


class TokenStrings:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        decoder = getattr(getattr(tokenizer, "backend_tokenizer", None), "decoder", None)
        self._byte_level = _byte_level_alphabet() if type(decoder).__name__ == "ByteLevel" else None
        self._texts: dict[int, str] = {}
        self._bytes: dict[int, list[int]] = {}

    def text(self, token_id: int) -> str:
        if token_id not in self._texts:
            self._texts[token_id] = (f"token_id:{token_id}" if self.tokenizer is None
                                     else self.tokenizer.decode([token_id]))
        return self._texts[token_id]

    def bytes(self, token_id: int) -> list[int] | None:
        if self.tokenizer is None:
            return None
        if token_id not in self._bytes:
            self._bytes[token_id] = list(self._raw_bytes(token_id))
        return self._bytes[token_id]

    def _raw_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if isinstance(piece, str):
            if self._byte_level is not None and piece and all(c in self._byte_level for c in piece):
                return bytes(self._byte_level[c] for c in piece)
            if (m := _BYTE_FALLBACK.fullmatch(piece)) is not None:
                return bytes([int(m.group(1), 16)])
        return self.text(token_id).encode("utf-8")
