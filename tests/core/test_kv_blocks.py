"""A sequence's KV cache leaves as fixed-size blocks and comes back without changing a token."""

from __future__ import annotations

import torch

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams

BLOCK = 16


def test_exported_blocks_resume_generation_exactly(hf_checkpoint):
    arch, path, _ = hf_checkpoint
    engine = monolithic_engine(path)
    prompt = [(i * 11) % 250 for i in range(40)]
    params = SamplingParams(max_tokens=10, ignore_eos=True)
    reference = engine.generate([prompt], params)[0]

    first = engine.add_request(prompt, SamplingParams(max_tokens=1, ignore_eos=True))
    while engine.has_unfinished():
        engine.step()
    blocks = first.kv.export_blocks(BLOCK)
    assert len(blocks) == 40 // BLOCK
    assert len(blocks[0]) == 2 * engine.num_layers and all(t.shape[1] == BLOCK for t in blocks[0])

    resumed = engine.add_request(prompt, params)
    resumed.kv.import_blocks([[t.clone() for t in b] for b in blocks], BLOCK)
    assert resumed.num_cached == 32 and resumed.num_uncached == 8  # only the tail is recomputed
    while engine.has_unfinished():
        engine.step()
    assert resumed.output_ids == reference, arch


def test_blocks_are_exact_copies_of_the_cache(mixtral_dir):
    engine = monolithic_engine(mixtral_dir)
    seq = engine.add_request(list(range(1, 34)), SamplingParams(max_tokens=1))
    engine.step()
    blocks = seq.kv.export_blocks(BLOCK)
    k0 = seq.kv.store.layers[0][0][seq.kv.slot]
    assert torch.equal(blocks[1][0], k0[:, BLOCK:2 * BLOCK])
    blocks[1][0].zero_()  # exports are copies: the live cache is untouched
    assert not torch.equal(blocks[1][0], k0[:, BLOCK:2 * BLOCK])


def test_batches_over_scattered_slots_match_each_sequence_alone(mixtral_dir):
    """Attention reads a view when a batch's slots are contiguous and gathers otherwise: same numbers."""
    engine = monolithic_engine(mixtral_dir)
    store = engine.kv_slots
    kvs = [store.new_sequence() for _ in range(3)]  # slots 0, 1, 2
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    batch = [kvs[2], kvs[0]]  # out of order: the gather path
    together = engine.runner.forward(prompts[0] + prompts[1], batch, [4, 3])
    alone = [engine.runner.forward(p, [store.new_sequence()], [len(p)])[0] for p in prompts]
    assert torch.allclose(together[0], alone[0], atol=1e-5) and torch.allclose(together[1], alone[1], atol=1e-5)
    step = engine.runner.forward([1, 2], batch, [1, 1])  # a decode step over the same scattered slots
    assert step.shape == (2, engine.model.vocab_size) and torch.isfinite(step).all()
