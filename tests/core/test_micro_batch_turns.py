"""Micro-batches taking turns on one thread (greenlets), and how many a step is split into."""

from __future__ import annotations

import threading

import pytest

from eaas.engine.micro_batch_turns import pass_turn, run_in_turns
from eaas.rpc.micro_batches import micro_batch_count


def test_jobs_alternate_at_each_pass_and_return_their_results_in_order():
    log = []

    def job(name: str, passes: int):
        def run():
            for i in range(passes):
                log.append(f"{name}{i}")
                pass_turn()
            log.append(f"{name} done")
            return name.upper()
        return run
    assert run_in_turns([job("a", 3), job("b", 1), job("c", 2)]) == ["A", "B", "C"]
    assert log == ["a0", "b0", "c0", "a1", "b done", "c1", "a2", "c done", "a done"]


def test_all_turns_run_on_the_calling_thread():
    threads = set()

    def job():
        threads.add(threading.get_ident())
        pass_turn()
        threads.add(threading.get_ident())
    run_in_turns([job, job])
    assert threads == {threading.get_ident()}


def test_a_failing_job_ends_the_others_and_its_error_propagates():
    unwound = []

    def failing():
        pass_turn()
        raise ValueError("expert call failed")

    def waiting():
        try:
            while True:
                pass_turn()
        finally:
            unwound.append("waiting")  # where a remote backend cancels its calls in flight
    with pytest.raises(ValueError, match="expert call failed"):
        run_in_turns([failing, waiting])
    assert unwound == ["waiting"]


def test_a_job_failing_before_its_first_pass_leaves_the_later_ones_unstarted():
    ran = []

    def failing():
        raise ValueError("bad batch")

    def later():
        ran.append("later")
        pass_turn()
    with pytest.raises(ValueError, match="bad batch"):
        run_in_turns([failing, later])
    assert ran == []


def test_pass_turn_outside_turns_does_nothing():
    pass_turn()
    assert run_in_turns([lambda: 1]) == [1]


@pytest.mark.parametrize("tokens, most, min_tokens, parts", [
    (64, 2, 128, 1),     # a 64-sequence decode step: unsplit (measured faster)
    (255, 2, 128, 1),
    (256, 2, 128, 2),    # a 256-sequence decode step: two of 128
    (4096, 2, 128, 2),   # never more than asked
    (4096, 4, 128, 4),
    (0, 2, 128, 1),
    (5, 2, 1, 2),        # min 1: split whenever there is more than one token
    (5, 1, 1, 1),
    (5, 3, 0, 3),        # a non-positive minimum counts as 1
])
def test_micro_batch_count(tokens, most, min_tokens, parts):
    assert micro_batch_count(tokens, most, min_tokens) == parts
