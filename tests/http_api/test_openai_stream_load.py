"""The `eaas up` vs transformers.generate benchmark's own parts: its SSE load generator against the real HTTP
app (every stream counted to the exact token), its stream tally on hand-written bodies, and how its rounds
are ordered and summarized. No timing is asserted: the figures are benchmarks/up_vs_generate.py's output."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from eaas.engine.sequence import SamplingParams

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from openai_stream_load import StreamTally, stream_batch  # noqa: E402
from up_vs_generate import UP, Round, ab_order, cpu_split, summarize  # noqa: E402

PROMPTS = [[72, 101, 108, 108, 111], [3, 9, 27, 81, 243, 7, 21], [100, 200]]


@pytest.mark.asyncio
async def test_every_stream_carries_exactly_the_engines_greedy_tokens(base_url, reference_engine):
    result = await stream_batch(base_url, PROMPTS, 12)

    expected = reference_engine.generate(PROMPTS, SamplingParams(max_tokens=12, ignore_eos=True))
    assert [t.token_ids for t in result.tallies] == expected
    assert all(len(ids) == 12 for ids in expected)
    assert result.failed(12) == 0 and result.tokens == 36
    assert all(t.done and t.finish_reason == "length" for t in result.tallies)


@pytest.mark.asyncio
async def test_a_refused_request_counts_as_a_failed_stream(base_url):
    result = await stream_batch(base_url, [[1, 2, 3], [-5]], 4)  # a negative token id is a 400

    assert result.tallies[1].error.startswith("HTTP 400")
    assert result.failed(4) == 1 and result.tokens == 4


def feed(body: bytes) -> StreamTally:
    tally = StreamTally()
    for line in body.split(b"\n"):
        tally.feed(line + b"\n")
    return tally


def test_tally_counts_token_ids_of_every_chunk_and_sees_the_end():
    body = (b'data: {"choices":[{"index":0,"text":"a","token_ids":[5],"finish_reason":null}]}\n\n'
            b': a comment\n\n'
            b'data: {"choices":[{"index":0,"text":"bc","token_ids":[6,7],"finish_reason":"length"}]}\n\n'
            b'data: {"choices":[],"usage":{"completion_tokens":3}}\n\n'
            b"data: [DONE]\n\n")
    tally = feed(body)
    assert (tally.token_ids, tally.finish_reason, tally.done, tally.error) == ([5, 6, 7], "length", True, None)
    assert tally.complete(3) and not tally.complete(4)


def test_tally_of_a_stream_that_failed_midway_is_not_complete():
    body = (b'data: {"choices":[{"index":0,"text":"a","token_ids":[5],"finish_reason":null}]}\n\n'
            b'data: {"error":{"message":"expert group unavailable","type":"server_error"}}\n\n'
            b"data: [DONE]\n\n")
    tally = feed(body)
    assert tally.error == "expert group unavailable" and not tally.complete(1)
    assert not feed(b'data: {"choices":[{"index":0,"token_ids":[1],"finish_reason":"length"}]}\n\n').complete(1)


def test_rounds_alternate_so_drift_weighs_on_every_side():
    assert ab_order(2, ["A", "B"]) == ["A", "B", "B", "A"]
    assert ab_order(3, ["A", "B1", "B2"]) == ["A", "B1", "B2", "B2", "B1", "A", "A", "B1", "B2"]


def test_cpu_split_gives_the_machine_rest_to_other():
    split = cpu_split({"gateway": 1.0, "experts": 2.0}, {"gateway": 1.5, "experts": 3.0}, machine_s=2.0)
    assert split == {"gateway": 0.5, "experts": 1.0, "other": 0.5}
    assert cpu_split({"gateway": 0.0}, {"gateway": 1.0}, machine_s=0.5)["other"] == 0.0


def test_summary_compares_eaas_up_with_the_fastest_generate_by_medians():
    rounds = [Round(UP, 1000, 1.0, {"gateway": 0.5, "experts": 1.0, "this_process": 0.1}),
              Round("generate_1t", 1000, 2.0, {"this_process": 1.9}),
              Round("generate_2t", 1000, 4.0, {"this_process": 3.0}),
              Round("generate_2t", 1000, 5.0, {"this_process": 3.0}),
              Round("generate_1t", 1000, 2.5, {"this_process": 2.0}),
              Round(UP, 1000, 2.0, {"gateway": 0.5, "experts": 1.0}, failed=1),
              Round(UP, 1000, 1.25, {"gateway": 0.5, "experts": 1.0})]
    s = summarize(rounds, new_tokens=16)
    assert s["tok_s"] == {UP: 800.0, "generate_1t": 450.0, "generate_2t": 225.0}
    assert s["generate_best"] == "generate_1t" and s["up_openai_over_generate"] == round(800 / 450, 3)
    assert s["failed_streams"] == 1
    assert s["cpu_ms_per_token"][UP] == {"experts": 1.0, "gateway": 0.5, "this_process": 0.033, "serving": 1.5,
                                         "wall": round(1e3 * 4.25 / 3000, 3)}
    assert s["cpu_ms_per_token"]["generate_1t"]["this_process"] == s["cpu_ms_per_token"]["generate_1t"]["serving"] == 1.95
    assert s["up_openai_over_generate_per_cpu_s"] == 1.3  # 1.95 / 1.5 ms of serving CPU per token, client left out
