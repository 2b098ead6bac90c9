"""The scheduler's decision, as a pure unit: token and sequence budgets, admission by free blocks,
growth as sequences decode, and preemption of the newest running sequence."""

from __future__ import annotations

from eaas.engine.scheduler import Demand, Scheduled, ScheduleLimits, schedule

BS = 4
ROOMY = ScheduleLimits(max_num_seqs=8, max_batched_tokens=64)


def decoding(cached: int, exclusive: int | None = None) -> Demand:
    held = -(-cached // BS)
    return Demand(cached, 1, held, held if exclusive is None else exclusive)


def test_running_decode_first_then_waiting_admitted_in_order_while_blocks_fit():
    plan = schedule([decoding(5)], [Demand(0, 6), Demand(0, 9), Demand(0, 1)], free_blocks=4, block_size=BS,
                    limits=ROOMY)
    # the running one needs no block (6th token in its 2nd block); 6 tokens need 2; 9 need 3 > 2 left: stop,
    # and the small one behind it does not overtake
    assert plan.scheduled == [Scheduled(0, 1), Scheduled(1, 6)]
    assert plan.admitted == 1 and plan.preempted == []


def test_a_waiting_sequence_counts_the_cached_blocks_it_shares():
    shares = Demand(cached=8, uncached=2, held=2)  # 8 cached tokens in 2 blocks someone else holds
    plan = schedule([], [shares], free_blocks=1, block_size=BS, limits=ROOMY)
    assert plan.scheduled == [Scheduled(0, 2)] and plan.admitted == 1


def test_decode_out_of_blocks_preempts_the_newest_running_sequence():
    running = [decoding(8), decoding(4), decoding(8)]  # all three need a new block for their next token
    plan = schedule(running, [Demand(0, 1)], free_blocks=1, block_size=BS, limits=ROOMY)
    assert plan.preempted == [2]  # the newest gives back its 2 blocks: enough for the other two
    assert plan.scheduled == [Scheduled(0, 1), Scheduled(1, 1)]
    assert plan.admitted == 0  # no admission in a step that preempted


def test_preemption_counts_only_blocks_that_come_free():
    running = [decoding(8), decoding(8, exclusive=0)]  # the newest shares every block it holds
    plan = schedule(running, [], free_blocks=0, block_size=BS, limits=ROOMY)
    assert plan.preempted == [1, 0]  # freeing the newest frees nothing: the oldest waits too
    assert plan.scheduled == []


def test_the_oldest_alone_out_of_blocks_is_preempted_itself():
    plan = schedule([decoding(8)], [], free_blocks=0, block_size=BS, limits=ROOMY)
    assert plan.preempted == [0] and plan.scheduled == []


def test_a_prompt_chunk_shrinks_to_the_free_blocks_instead_of_preempting():
    plan = schedule([Demand(cached=4, uncached=20, held=1, exclusive=1)], [], free_blocks=2, block_size=BS,
                    limits=ROOMY)
    assert plan.scheduled == [Scheduled(0, 8)] and plan.preempted == []


def test_token_and_sequence_budgets_bound_the_step():
    plan = schedule([], [Demand(0, 90)], free_blocks=100, block_size=BS,
                    limits=ScheduleLimits(max_num_seqs=4, max_batched_tokens=32))
    assert plan.scheduled == [Scheduled(0, 32)]  # a long prompt is prefilled in chunks
    plan = schedule([decoding(4)] * 2, [Demand(0, 2)] * 3, free_blocks=100, block_size=BS,
                    limits=ScheduleLimits(max_num_seqs=3, max_batched_tokens=64))
    assert [s.index for s in plan.scheduled] == [0, 1, 2] and plan.admitted == 1
