"""Requests join and leave a running batch without changing anyone's tokens."""

from __future__ import annotations

from eaas.engine.factory import monolithic_engine
from eaas.engine.scheduler import ScheduleLimits
from eaas.engine.sequence import SamplingParams


def run_alone(engine, prompt, params):
    return engine.generate([prompt], params)[0]


def test_request_joining_a_running_batch_gets_the_same_tokens(mixtral_dir):
    engine = monolithic_engine(mixtral_dir)
    greedy = SamplingParams(max_tokens=10, ignore_eos=True)
    sampled = SamplingParams(max_tokens=10, temperature=0.8, top_p=0.9, seed=7, ignore_eos=True)
    late_prompt, early_prompt = [9, 8, 7, 6, 5, 4, 3], list(range(40, 70))
    alone_greedy = run_alone(engine, late_prompt, greedy)
    alone_sampled = run_alone(engine, late_prompt, sampled)
    alone_early = run_alone(engine, early_prompt, greedy)

    early = engine.add_request(early_prompt, greedy).seq
    for _ in range(4):  # early is decoding when the others arrive
        engine.step()
    late_g = engine.add_request(late_prompt, greedy).seq
    late_s = engine.add_request(late_prompt, sampled).seq
    seen_batch_sizes = set()
    while engine.has_unfinished():
        seen_batch_sizes.add(len(engine.running) + len(engine.waiting))
        engine.step()
    assert 3 in seen_batch_sizes
    assert early.output_ids == alone_early
    assert late_g.output_ids == alone_greedy
    assert late_s.output_ids == alone_sampled
    assert alone_sampled != alone_greedy  # sampling really sampled


def test_long_prompt_is_prefilled_in_chunks_with_the_same_result(mixtral_dir):
    prompt = [(i * 37) % 250 for i in range(90)]
    params = SamplingParams(max_tokens=8, ignore_eos=True)
    whole = monolithic_engine(mixtral_dir).generate([prompt], params)[0]
    chunked_engine = monolithic_engine(mixtral_dir, limits=ScheduleLimits(max_num_seqs=4, max_batched_tokens=32))
    seq = chunked_engine.add_request(prompt, params).seq
    steps = 0
    while chunked_engine.has_unfinished():
        chunked_engine.step()
        steps += 1
    assert steps == 3 + 8 - 1  # 90 tokens in chunks of 32 (the third chunk also samples), then 7 decodes
    assert seq.output_ids == whole


def test_max_num_seqs_bounds_the_batch_and_queues_the_rest(mixtral_dir):
    engine = monolithic_engine(mixtral_dir, limits=ScheduleLimits(max_num_seqs=2, max_batched_tokens=512))
    seqs = [engine.add_request([i + 1, i + 2], SamplingParams(max_tokens=3, ignore_eos=True)).seq for i in range(5)]
    engine.step()
    assert len(engine.running) == 2 and len(engine.waiting) == 3
    while engine.has_unfinished():
        engine.step()
        assert len(engine.running) <= 2
    assert all(len(s.output_ids) == 3 and s.finish_reason == "length" for s in seqs)


def test_micro_batched_steps_give_the_same_tokens(mixtral_dir):
    from eaas.engine.llm_engine import split_evenly

    assert split_evenly(5, 2) == [(0, 2), (2, 5)]
    assert split_evenly(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert split_evenly(1, 2) == [(0, 1)]
    prompts = [[i + 1] * (i + 2) for i in range(7)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    plain = monolithic_engine(mixtral_dir).generate(prompts, params)
    assert monolithic_engine(mixtral_dir, micro_batches=2).generate(prompts, params) == plain
