"""Micro-batches that take turns on one thread: MegaScale-Infer's ping-pong without a second thread.

Each micro-batch's forward runs in its own greenlet. When a remote expert backend has sent a layer's
requests it calls `pass_turn()`: the next micro-batch runs (its attention, its own sends) while the expert
servers compute, and the first one reads its answers when its turn comes back. On one OS thread, so
nothing contends for the GIL and a hand-over costs a stack switch (~1 us), not a thread wake-up.

Why not threads (what this replaced): the dense model is hundreds of small torch ops, each releasing and
re-taking the GIL, so two micro-batch threads spent their time handing the GIL to each other: on 2 cores,
disaggregated over monolithic fell from 0.710 / 0.714 with one micro-batch to 0.485 / 0.692 with two
threaded ones at 64 / 256 sequences (shm; README "Data-plane transport").

Outside `run_in_turns` (one micro-batch, or a local backend that never passes), `pass_turn` does nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import greenlet

T = TypeVar("T")


class _MicroBatch(greenlet.greenlet):
    """A greenlet that runs one micro-batch's forward (and may pass its turn)."""


def run_in_turns(jobs: list[Callable[[], T]]) -> list[T]:
    """Run jobs round-robin on this thread, each until it passes its turn or ends; their results in order.

    The first job to raise ends the others (GreenletExit is thrown into them, so their pending expert
    calls are cancelled as on any error) and its exception propagates.
    """
    lets = [_MicroBatch(job) for job in jobs]
    results: list = [None] * len(jobs)
    waiting = list(range(len(jobs)))
    try:
        while waiting:
            for i in list(waiting):
                value = lets[i].switch()
                if lets[i].dead:
                    results[i] = value
                    waiting.remove(i)
    finally:
        for let in lets:
            if not let.dead:
                let.throw()  # GreenletExit: unwinds its frames (finally blocks run) and ends it
    return results


def pass_turn() -> None:
    """Let another micro-batch run; return when this one's turn comes back (no-op outside run_in_turns)."""
    current = greenlet.getcurrent()
    if isinstance(current, _MicroBatch):
        current.parent.switch()
