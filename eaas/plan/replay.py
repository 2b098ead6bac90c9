"""Replay a trace against running gateways (gRPC), each request at its arrival time, recording token times.

Used to validate the simulator against a real `eaas up` (benchmarks/plan_validation.py). Prompts are
synthetic token ids of the trace's prompt length; every request decodes exactly its response length
(ignore_eos), so measured and simulated runs serve the same tokens. All requests share one client (one
gRPC channel per gateway): a channel per request would add a TCP and HTTP/2 handshake per arrival on
the machine the gateway runs on, work a real client does elsewhere. One channel carries at most
`max_streams` streams at once (the gateway's per-connection limit, `--max-concurrent-streams`, default 64:
past it the server refuses streams with RST_STREAM REFUSED_STREAM); a request past that waits here for a
stream, as it would wait for a batch slot, and the simulator is given the same cap.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np

from eaas.client import SyncClient
from eaas.plan.trace import Trace


@dataclass
class ReplayResult:
    start: float                      # perf_counter at the trace's time 0
    token_times: list[list[float]]    # per request: seconds since start of each token
    errors: list[str]

    @property
    def tokens(self) -> int:
        return sum(len(t) for t in self.token_times)

    @property
    def last_token_s(self) -> float:
        return max((t[-1] for t in self.token_times if t), default=0.0)

    def throughput(self) -> float:
        return self.tokens / self.last_token_s if self.last_token_s else 0.0

    def itl_quantile(self, q: float) -> float:
        gaps = np.concatenate([np.diff(t) for t in self.token_times if len(t) > 1] or [np.zeros(0)])
        return float(np.quantile(gaps, q)) if len(gaps) else 0.0


def replay(trace: Trace, gateways: list[str], vocab: int = 250, timeout_s: float = 300.0,
           max_streams: int = 64) -> ReplayResult:
    times: list[list[float]] = [[] for _ in range(len(trace))]
    streams = threading.BoundedSemaphore(max_streams * len(gateways))
    errors: list[str] = []
    client = SyncClient(gateways, timeout=timeout_s)
    client.info()  # channels connected before the clock starts
    start = time.perf_counter() + 0.5

    def run(i: int) -> None:
        prompt = [(i * 31 + j * 7) % vocab + 1 for j in range(max(1, int(trace.prompt_tokens[i])))]
        try:
            with streams:
                for chunk in client.generate_stream(prompt_ids=prompt, max_tokens=int(trace.response_tokens[i]),
                                                    ignore_eos=True, temperature=0.0):
                    now = time.perf_counter() - start
                    times[i].extend([now] * len(chunk.token_ids))
        except Exception as exc:  # reported by the caller
            errors.append(f"request {i}: {exc!r}")

    threads = []
    try:
        for i, at in enumerate(trace.arrival_s.tolist()):
            delay = start + at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            thread = threading.Thread(target=run, args=(i,), daemon=True)
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join(timeout_s)
    finally:
        client.close()
    return ReplayResult(start, times, errors)
