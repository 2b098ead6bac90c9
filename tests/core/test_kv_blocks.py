"""A sequence's cache leaves as MemPool blocks with the step outputs and comes back without changing a token."""

from __future__ import annotations

import torch

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams

BLOCK = 16


def run_collecting_blocks(engine, handle) -> list:
    """Step to the end; the MemPool blocks the step outputs handed out for this request, in order."""
    blocks = []
    while engine.has_unfinished():
        for out in engine.step():
            if out.seq is handle.seq:
                assert out.first_block == len(blocks)  # each block is handed out once, in order
                blocks += out.new_blocks
    return blocks


def test_exported_blocks_resume_generation_exactly(hf_checkpoint):
    arch, path, _ = hf_checkpoint
    prompt = [(i * 11) % 250 for i in range(40)]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    reference = monolithic_engine(path).generate([prompt], params)[0]

    engine = monolithic_engine(path)
    engine.export_block_size = BLOCK
    blocks = run_collecting_blocks(engine, engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True)))
    assert len(blocks) == 40 // BLOCK
    assert len(blocks[0]) == 2 * engine.num_layers and all(t.shape[1] == BLOCK for t in blocks[0])

    other = monolithic_engine(path)  # a fresh engine (another gateway): its own cache knows nothing
    resumed = other.add_request(prompt, params, cached_blocks=[[t.clone() for t in b] for b in blocks])
    other.step()
    assert resumed.seq.imported_tokens == 32 and len(resumed.seq.output_ids) == 1  # only the tail ran
    while other.has_unfinished():
        other.step()
    assert resumed.seq.output_ids == reference, arch


def test_blocks_are_exact_copies_of_the_cache_at_another_block_size(mixtral_dir):
    engine = monolithic_engine(mixtral_dir, block_size=8)
    engine.export_block_size = BLOCK  # the MemPool's blocks need not be the engine's
    handle = engine.add_request(list(range(1, 34)), SamplingParams(max_tokens=2))
    out = engine.step()[0]  # the prefill caches 33 tokens: two full blocks of 16
    assert out.first_block == 0 and len(out.new_blocks) == 2
    table = handle.seq.block_table
    k0 = engine.kv.layers[0][0]
    rows = torch.cat([torch.arange(8) + table[b] * 8 for b in (2, 3)])  # tokens 16..31 sit in blocks 2 and 3
    assert torch.equal(out.new_blocks[1][0], k0[rows].transpose(0, 1))
    out.new_blocks[1][0].zero_()  # exports are copies: the live cache is untouched
    assert not torch.equal(out.new_blocks[1][0], k0[rows].transpose(0, 1))


def test_batches_over_scattered_blocks_match_each_sequence_alone(mixtral_dir):
    """Block tables in any order and interleaved: the gather gives the same numbers as one sequence alone."""
    engine = monolithic_engine(mixtral_dir, block_size=2)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    spare: list[int] = []
    engine.blocks.grow(spare, 2)
    a, b = [], []
    for _ in range(2):  # interleave the two tables' blocks
        engine.blocks.grow(a, 2 * (len(a) + 1))
        engine.blocks.grow(b, 2 * (len(b) + 1))
    a.reverse()  # blocks out of order
    together = engine.runner.forward(prompts[0] + prompts[1], [a, b], [0, 0], [4, 3])
    alone = []
    for p in prompts:
        t: list[int] = []
        engine.blocks.grow(t, len(p))
        alone.append(engine.runner.forward(p, [t], [0], [len(p)])[0])
    assert torch.allclose(together[0], alone[0], atol=1e-5) and torch.allclose(together[1], alone[1], atol=1e-5)
    engine.blocks.grow(a, 5)
    step = engine.runner.forward([1, 2], [a, b], [4, 3], [1, 1])  # a decode step over the same tables
    assert step.shape == (2, engine.model.vocab_size) and torch.isfinite(step).all()


def test_a_request_with_a_cached_prefix_shares_its_blocks_and_gets_the_same_tokens(mixtral_dir):
    prompt = [(i * 7) % 250 + 1 for i in range(37)]
    params = SamplingParams(max_tokens=6, ignore_eos=True)
    engine = monolithic_engine(mixtral_dir, block_size=BLOCK)
    first = engine.add_request(prompt, params)
    engine.step()  # first prefilled: its two full blocks are named
    second = engine.add_request(prompt, params)
    engine.step()
    shared = first.seq.block_table[:2]
    assert second.seq.block_table[:2] == shared  # shared, not copied
    assert len(second.seq.output_ids) == 1 and engine.blocks.refs[shared[0]] == 2
    while engine.has_unfinished():
        engine.step()
    assert second.seq.output_ids == first.seq.output_ids == monolithic_engine(mixtral_dir).generate([prompt], params)[0]
    assert engine.blocks.num_used == 0
    third = engine.add_request(prompt, params)  # both finished: the named blocks are free but still cached
    engine.step()
    assert third.seq.block_table[:2] == shared
