"""BurstGPT CSV reading: failed requests (0 response tokens) skipped, arrivals sorted and shifted to 0."""

from __future__ import annotations

import numpy as np
import pytest

from eaas.errors import UserError
from eaas.plan.generator import TraceShape, generate_trace
from eaas.plan.trace import read_burstgpt_csv, write_burstgpt_csv

BURSTGPT = """Timestamp,Session ID,Elapsed time,Model,Request tokens,Response tokens,Total tokens,Log Type
5,1,0.9,ChatGPT,472,18,490,Conversation log
7.5,2,1.2,GPT-4,1200,0,1200,Conversation log
6,3,2.0,ChatGPT,80,311,391,API log
12,4,0.4,GPT-4,33,1,34,API log
"""


def test_reader_skips_failed_requests_and_sorts_by_arrival(tmp_path):
    path = tmp_path / "burst.csv"
    path.write_text(BURSTGPT)
    trace = read_burstgpt_csv(path)
    assert trace.arrival_s.tolist() == [0.0, 1.0, 7.0]
    assert trace.prompt_tokens.tolist() == [472, 80, 33]
    assert trace.response_tokens.tolist() == [18, 311, 1]


def test_reader_names_the_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("Timestamp,Request tokens\n1,2\n")
    with pytest.raises(UserError, match="Response tokens"):
        read_burstgpt_csv(path)


def test_reader_refuses_a_trace_of_only_failed_requests(tmp_path):
    path = tmp_path / "failed.csv"
    path.write_text(BURSTGPT.splitlines()[0] + "\n1,1,0,ChatGPT,10,0,10,API log\n")
    with pytest.raises(UserError, match="no successful requests"):
        read_burstgpt_csv(path)


def test_a_generated_trace_round_trips_through_the_csv_format(tmp_path):
    trace = generate_trace(TraceShape(hours=0.05), seed=3)
    write_burstgpt_csv(trace, tmp_path / "t.csv")
    back = read_burstgpt_csv(tmp_path / "t.csv")
    assert np.allclose(back.arrival_s, trace.arrival_s, atol=1e-3)
    assert back.prompt_tokens.tolist() == trace.prompt_tokens.tolist()
    assert back.response_tokens.tolist() == trace.response_tokens.tolist()
