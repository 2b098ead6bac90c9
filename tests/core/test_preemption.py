"""A KV budget too small for the batch preempts sequences and recomputes them later: no token changes."""

from __future__ import annotations

from test_hf_equivalence import MAX_NEW, PROMPTS, hf_greedy

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams

BLOCK = 4


def engine_with_blocks(path, blocks: int):
    probe = monolithic_engine(path, kv_cache_bytes=1, block_size=BLOCK)  # one block: its size in bytes
    return monolithic_engine(path, kv_cache_bytes=blocks * probe.kv.nbytes, block_size=BLOCK)


def run_counting_peak(engine, prompts, params):
    handles = [engine.add_request(p, params) for p in prompts]
    peak = 0
    while engine.has_unfinished():
        engine.step()
        peak = max(peak, engine.blocks.num_used)
    return [h.seq.output_ids for h in handles], peak


def test_greedy_output_is_identical_with_and_without_preemption_and_equals_transformers(hf_checkpoint):
    arch, path, hf = hf_checkpoint
    params = SamplingParams(max_tokens=MAX_NEW)
    roomy = monolithic_engine(path, block_size=BLOCK)
    tight = engine_with_blocks(path, 10)  # the longest request alone needs 9 blocks of 4 tokens
    assert tight.blocks.num_blocks == 10
    expected, _ = run_counting_peak(roomy, PROMPTS, params)
    got, peak = run_counting_peak(tight, PROMPTS, params)
    assert roomy.num_preemptions == 0 and tight.num_preemptions > 0
    assert peak <= 10 and tight.blocks.num_used == 0  # every block back once all finished
    assert got == expected, arch
    for prompt, tokens in zip(PROMPTS, got):
        assert tokens == hf_greedy(hf, prompt, MAX_NEW), f"{arch}: prompt {prompt[:4]}..."


def test_seeded_sampling_is_identical_with_and_without_preemption(mixtral_dir):
    params = SamplingParams(max_tokens=20, temperature=0.9, top_p=0.95, seed=11, ignore_eos=True)
    prompts = [[3 + i] * (5 + 3 * i) for i in range(6)]
    roomy, _ = run_counting_peak(monolithic_engine(mixtral_dir, block_size=BLOCK), prompts, params)
    tight = engine_with_blocks(mixtral_dir, 12)
    got, _ = run_counting_peak(tight, prompts, params)
    assert tight.num_preemptions > 0
    assert got == roomy


def test_queued_requests_hold_no_kv_and_a_too_long_request_is_refused(mixtral_dir):
    import pytest

    from eaas.engine.llm_engine import RequestError

    engine = engine_with_blocks(mixtral_dir, 6)
    for i in range(50):
        engine.add_request([i + 1] * 10, SamplingParams(max_tokens=4, ignore_eos=True))
    assert engine.blocks.num_used == 0  # fifty queued, no block held
    engine.step()
    assert 0 < engine.blocks.num_used <= 6 and len(engine.waiting) >= 47
    with pytest.raises(RequestError, match="exceeds the KV cache of 24 tokens"):
        engine.add_request([1] * 20, SamplingParams(max_tokens=5))
