"""Streaming text: the pieces each token adds concatenate to the full decode, multi-byte characters whole."""

from __future__ import annotations

from eaas.gateway.detokenizer import IncrementalDetokenizer
from eaas.model.tiny import byte_level_tokenizer


def test_pieces_concatenate_to_the_whole_text_and_never_split_a_character():
    tok = byte_level_tokenizer()
    text = "héllo wörld — 漢字 ok"
    ids = tok(text)["input_ids"]
    assert len(ids) > len(text)  # multi-byte characters span several byte tokens
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.step(ids[:n], final=n == len(ids)) for n in range(1, len(ids) + 1)]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert "" in pieces  # some tokens end mid-character: their text waits for the next byte


def test_no_tokenizer_means_no_text():
    assert IncrementalDetokenizer(None).step([1, 2, 3]) == ""


def test_a_resumed_stream_continues_the_text_where_the_first_left_off():
    # what a second gateway does after a failover: replay the tokens the client has, then stream on
    tok = byte_level_tokenizer()
    text = "né 漢"
    ids = tok(text)["input_ids"]
    whole = IncrementalDetokenizer(tok)
    pieces = [whole.step(ids[:n], final=n == len(ids)) for n in range(1, len(ids) + 1)]
    for k in range(1, len(ids)):  # every switch point, those inside a character included
        resumed = IncrementalDetokenizer(tok)
        assert resumed.replay(ids[:k]) == pieces[:k]
        rest = [resumed.step(ids[:n], final=n == len(ids)) for n in range(k + 1, len(ids) + 1)]
        assert "".join(pieces[:k]) + "".join(rest) == text, f"switched after {k} tokens"
    fresh = IncrementalDetokenizer(tok)  # without the replay, a character split at the switch is lost
    assert "".join(fresh.step(ids[2:n], final=n == len(ids)) for n in range(3, len(ids) + 1)) != text[1:]
