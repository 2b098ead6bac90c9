"""bf16 and fp16 weights run through the same engine and stay close to fp32."""

from __future__ import annotations

import pytest
import torch

from eaas.engine.factory import monolithic_engine
from eaas.engine.kv_cache import SequenceKV


@pytest.mark.parametrize("dtype,tol", [("bfloat16", 0.15), ("float16", 0.02)])
def test_half_precision_logits_track_fp32(mixtral_dir, dtype, tol):
    prompt = list(range(20, 44))
    ref = monolithic_engine(mixtral_dir).runner.forward(prompt, [SequenceKV(3)], [len(prompt)], all_logits=True)
    engine = monolithic_engine(mixtral_dir, dtype)
    assert engine.model.hf.lm_head.weight.dtype == getattr(torch, dtype)
    got = engine.runner.forward(prompt, [SequenceKV(3)], [len(prompt)], all_logits=True)
    assert torch.isfinite(got).all()
    assert (got - ref).abs().max().item() < tol
