"""Request traces in the BurstGPT CSV format: arrival time, prompt tokens and response tokens per request.

BurstGPT (Azure OpenAI traces) columns: Timestamp (s), Session ID, Elapsed time, Model, Request tokens,
Response tokens, Total tokens, Log Type. A row with 0 response tokens is a failed request: skipped.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from eaas.errors import UserError

BURSTGPT_COLUMNS = ("Timestamp", "Session ID", "Elapsed time", "Model", "Request tokens", "Response tokens",
                    "Total tokens", "Log Type")
NEEDED = ("Timestamp", "Request tokens", "Response tokens")


@dataclass(frozen=True)
class Trace:
    arrival_s: np.ndarray        # float64, ascending, the first request at 0
    prompt_tokens: np.ndarray    # int64 >= 0
    response_tokens: np.ndarray  # int64 >= 1

    def __len__(self) -> int:
        return len(self.arrival_s)

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def first(self, seconds: float) -> "Trace":
        """The requests that arrive in the first `seconds`."""
        n = int(np.searchsorted(self.arrival_s, seconds, side="left"))
        return Trace(self.arrival_s[:n], self.prompt_tokens[:n], self.response_tokens[:n])


def trace_from_rows(timestamps, prompts, responses) -> Trace:
    """Sorted by arrival, shifted to start at 0, failed (0-response) requests dropped."""
    t = np.asarray(timestamps, dtype=np.float64)
    p = np.asarray(prompts, dtype=np.int64)
    r = np.asarray(responses, dtype=np.int64)
    ok = r > 0
    t, p, r = t[ok], p[ok], r[ok]
    order = np.argsort(t, kind="stable")
    t = t[order]
    return Trace(t - (t[0] if len(t) else 0.0), p[order], r[order])


def read_burstgpt_csv(path: str | Path) -> Trace:
    """Read a BurstGPT CSV (extra columns are ignored; Timestamp, Request and Response tokens are needed)."""
    path = Path(path)
    try:
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in NEEDED if c not in header]
            if missing:
                raise UserError(f"{path}: not a BurstGPT CSV: missing column(s) {', '.join(missing)}")
            reader.fieldnames = header
            times, prompts, responses = [], [], []
            for line, row in enumerate(reader, start=2):
                try:
                    times.append(float(row["Timestamp"]))
                    prompts.append(int(float(row["Request tokens"])))
                    responses.append(int(float(row["Response tokens"])))
                except (TypeError, ValueError) as exc:
                    raise UserError(f"{path}:{line}: unreadable row ({exc})") from None
    except OSError as exc:
        raise UserError(f"cannot read trace {path}: {exc.strerror}") from None
    trace = trace_from_rows(times, prompts, responses)
    if not len(trace):
        raise UserError(f"{path}: no successful requests (every row has 0 response tokens)")
    return trace


def write_burstgpt_csv(trace: Trace, path: str | Path, model: str = "generated") -> None:
    """Write a trace in the BurstGPT layout (Session ID = row, Elapsed time = 0, Log Type = Conversation log)."""
    with Path(path).open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(BURSTGPT_COLUMNS)
        for i, (t, p, r) in enumerate(zip(trace.arrival_s, trace.prompt_tokens, trace.response_tokens)):
            writer.writerow([f"{t:.3f}", i, 0, model, int(p), int(r), int(p + r), "Conversation log"])
