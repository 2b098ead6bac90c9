"""Retry-After follows the queue's drain rate: queue length over departures per second, within 1..60 s."""

from __future__ import annotations

from eaas.gateway.retry_after import DrainRate, retry_after_s


def test_retry_after_is_the_queue_over_its_recent_drain_rate():
    two_per_second = [100.0 + 0.5 * i for i in range(20)]  # 20 departures over 9.5 s
    now = 110.0
    assert retry_after_s(9, two_per_second, now) == 5      # the 10th in line: 10 / 2 per s
    assert retry_after_s(0, two_per_second, now) == 1      # next in line, within a second
    assert retry_after_s(1000, two_per_second, now) == 60  # bounded above


def test_a_queue_that_has_not_drained_lately_answers_the_longest_wait():
    assert retry_after_s(3, [], 50.0) == 60
    assert retry_after_s(3, [10.0, 11.0], 50.0, window_s=30) == 60  # departures older than the window
    # a burst within the last second counts as over one second, not as an unbounded rate
    assert retry_after_s(5, [49.9] * 3, 50.0) == 2


def test_drain_rate_records_departures_on_its_clock():
    clock = [0.0]
    drain = DrainRate(window_s=30, clock=lambda: clock[0])
    assert drain.retry_after_s(4) == 60
    for _ in range(10):  # one departure a second
        clock[0] += 1
        drain.record(1)
    drain.record(0)
    assert drain.retry_after_s(4) == 5
    clock[0] += 31  # a quiet half minute: the old rate no longer counts
    assert drain.retry_after_s(4) == 60
