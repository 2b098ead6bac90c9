"""The engine, on transformers-written checkpoints, generates exactly what transformers generates."""

from __future__ import annotations

import torch

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams

PROMPTS = [[5, 17, 42], list(range(10, 31)), [7] * 9, [100, 3, 250, 9, 1, 2], [300]]
MAX_NEW = 12


def hf_greedy(model, prompt: list[int], max_new: int) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


def test_batched_greedy_equals_transformers_generate(hf_checkpoint):
    arch, path, hf = hf_checkpoint
    engine = monolithic_engine(path)
    ours = engine.generate(PROMPTS, SamplingParams(max_tokens=MAX_NEW))
    assert len(engine.running) == 0
    for prompt, got in zip(PROMPTS, ours):
        assert got == hf_greedy(hf, prompt, MAX_NEW), f"{arch}: prompt {prompt[:4]}..."


def test_prefill_and_decode_logits_match_transformers(hf_checkpoint):
    arch, path, hf = hf_checkpoint
    engine = monolithic_engine(path)
    prompt = PROMPTS[1]
    table: list[int] = []
    engine.blocks.grow(table, len(prompt))
    n = len(prompt) - 3
    ours = engine.runner.forward(prompt[:-3], [table], [0], [n], all_logits=True)
    for i, t in enumerate(prompt[-3:]):  # three decode steps against the cache
        ours = torch.cat([ours, engine.runner.forward([t], [table], [n + i], [1])])
    with torch.no_grad():
        ref = hf(torch.tensor([prompt])).logits[0].float()
    assert ours.shape == ref.shape
    assert (ours - ref).abs().max().item() < 1e-4, arch


def test_no_routed_expert_tensor_is_read_by_the_dense_side(hf_checkpoint, monkeypatch):
    from eaas.model.backend import LocalExpertBackend
    from eaas.model.checkpoint import Checkpoint
    from eaas.model.dense import load_dense_model
    from eaas.model.experts import load_expert_weights

    arch, path, _ = hf_checkpoint
    ckpt = Checkpoint(path)
    experts = load_expert_weights(ckpt)
    read_keys: list[str] = []
    original = Checkpoint.read

    def spy(self, keys, *a, **kw):
        read_keys.extend(keys)
        return original(self, keys, *a, **kw)

    monkeypatch.setattr(Checkpoint, "read", spy)
    dense = load_dense_model(ckpt, LocalExpertBackend(experts))
    assert read_keys and not any(ckpt.family.is_routed_expert_key(k) for k in read_keys)
    assert not any(".mlp.experts." in name for name, _ in dense.hf.named_parameters())  # shared experts stay
