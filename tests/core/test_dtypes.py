"""bf16 and fp16 weights run through the same engine and stay close to fp32."""

from __future__ import annotations

import pytest
import torch

from eaas.engine.factory import monolithic_engine


def prefill_logits(engine, prompt: list[int]) -> torch.Tensor:
    table: list[int] = []
    engine.blocks.grow(table, len(prompt))
    return engine.runner.forward(prompt, [table], [0], [len(prompt)], all_logits=True)


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.15), ("float16", 0.02)])
def test_half_precision_logits_track_fp32(mixtral_dir, dtype, tol):
    prompt = list(range(20, 44))
    fp32 = monolithic_engine(mixtral_dir)
    ref = prefill_logits(fp32, prompt)
    engine = monolithic_engine(mixtral_dir, dtype)
    assert engine.model.hf.lm_head.weight.dtype == getattr(torch, dtype)
    got = prefill_logits(engine, prompt)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() < tol
