"""Attention reading the dense mirror of running sequences gives the tokens that gathering blocks gives."""

from __future__ import annotations

from test_preemption import engine_with_blocks, run_counting_peak

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams


def without_mirror(engine):
    engine.mirror = None  # attention gathers every sequence's blocks
    return engine


def mixed_requests() -> tuple[list[list[int]], SamplingParams]:
    """Shared prefixes, a prompt longer than a step's token budget, different lengths (sequences leave)."""
    shared = [7] * 12
    prompts = [shared + [i + 1] * (2 + 3 * i) for i in range(5)] + [[9] * 40, [5, 6, 7]]
    return prompts, SamplingParams(max_tokens=9, ignore_eos=True)


def test_mirror_gives_the_tokens_of_the_block_gather_with_preemption_and_prefix_sharing(mixtral_dir):
    prompts, params = mixed_requests()
    expected, _ = run_counting_peak(without_mirror(engine_with_blocks(mixtral_dir, 16)), prompts, params)
    tight = engine_with_blocks(mixtral_dir, 16)
    tight.mirror.max_bytes = None  # uncapped: this test is about preempted sequences in the mirror
    got, _ = run_counting_peak(tight, prompts, params)
    assert tight.num_preemptions > 0  # preempted sequences come back to a fresh slot and copy their prefix in
    assert got == expected
    assert tight.mirror.slot_of == {}  # every slot given back


def test_mirror_serves_a_request_joining_mid_run_and_micro_batches(mixtral_dir):
    from eaas.engine.scheduler import ScheduleLimits

    prompts, params = mixed_requests()
    limits = ScheduleLimits(max_num_seqs=3, max_batched_tokens=16)  # chunked prefill, a queue, slots reused
    expected = without_mirror(monolithic_engine(mixtral_dir, limits=limits)).generate(prompts, params)
    engine = monolithic_engine(mixtral_dir, limits=limits, micro_batches=2)
    assert engine.generate(prompts, params) == expected
    assert engine.mirror.num_slots <= 4 and engine.mirror.slot_of == {}


def test_a_batch_over_the_mirror_cap_gathers_blocks_and_the_mirror_stays_within_it(mixtral_dir):
    from eaas.engine.scheduler import ScheduleLimits

    prompts, params = mixed_requests()
    prompts = prompts + [[11] * 70]  # its context needs a capacity of 128 rows: over the cap below
    limits = ScheduleLimits(max_num_seqs=3, max_batched_tokens=16)
    expected = without_mirror(monolithic_engine(mixtral_dir, limits=limits)).generate(prompts, params)
    engine = monolithic_engine(mixtral_dir, limits=limits)
    cap = 4 * 64 * engine.mirror.bytes_per_row  # 4 slots x 64 rows
    engine.mirror.max_bytes = cap
    outcomes = []
    stage = engine.mirror.stage
    engine.mirror.stage = lambda *a: outcomes.append(stage(*a)) or outcomes[-1]
    assert engine.generate(prompts, params) == expected
    assert None in outcomes and any(o is not None for o in outcomes)  # both paths ran, in one run
    assert 0 < engine.mirror.nbytes <= cap
    assert engine.mirror.slot_of == {}
