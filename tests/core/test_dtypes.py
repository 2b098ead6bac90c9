"""bf16 and fp16 weights run through the same engine and stay close to fp32."""

from __future__ import annotations

import pytest
import torch

from eaas.engine.factory import monolithic_engine


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.15), ("float16", 0.02)])
def test_half_precision_logits_track_fp32(mixtral_dir, dtype, tol):
    prompt = list(range(20, 44))
    fp32 = monolithic_engine(mixtral_dir)
    ref = fp32.runner.forward(prompt, [fp32.kv_slots.new_sequence()], [len(prompt)], all_logits=True)
    engine = monolithic_engine(mixtral_dir, dtype)
    assert engine.model.hf.lm_head.weight.dtype == getattr(torch, dtype)
    got = engine.runner.forward(prompt, [engine.kv_slots.new_sequence()], [len(prompt)], all_logits=True)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() < tol
