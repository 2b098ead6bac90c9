"""Builds engines: the monolithic one (all experts in-process) or one over any expert backend."""

from __future__ import annotations

import logging
from pathlib import Path

from eaas.engine.llm_engine import LLMEngine
from eaas.engine.scheduler import ScheduleLimits
from eaas.model.backend import ExpertBackend, LocalExpertBackend
from eaas.model.checkpoint import Checkpoint, parse_dtype
from eaas.model.dense import load_dense_model
from eaas.model.experts import load_expert_weights


def quiet_transformers() -> None:
    logging.getLogger("transformers").setLevel(logging.ERROR)


def engine_with_backend(ckpt: Checkpoint, backend: ExpertBackend, dtype: str = "float32",
                        limits: ScheduleLimits = ScheduleLimits(), micro_batches: int = 1,
                        kv_cache_bytes: int | None = None, block_size: int = 16,
                        micro_batch_min_tokens: int = 1) -> LLMEngine:
    """kv_cache_bytes: the KV budget, preallocated now (None: kv_budget.py's default share of memory).
    micro_batch_min_tokens: a step is split into micro-batches only while each gets this many tokens."""
    quiet_transformers()
    return LLMEngine(load_dense_model(ckpt, backend, parse_dtype(dtype)), limits, micro_batches,
                     kv_cache_bytes, block_size, micro_batch_min_tokens)


def monolithic_engine(model_dir: str | Path, dtype: str = "float32", limits: ScheduleLimits = ScheduleLimits(),
                      micro_batches: int = 1, kv_cache_bytes: int | None = None, block_size: int = 16) -> LLMEngine:
    """Dense model + every routed expert in this process, behind the same backend seam."""
    quiet_transformers()
    ckpt = Checkpoint(model_dir)
    experts = load_expert_weights(ckpt, dtype=parse_dtype(dtype))
    return engine_with_backend(ckpt, LocalExpertBackend(experts), dtype, limits, micro_batches,
                               kv_cache_bytes, block_size)


def load_tokenizer(model_dir: str | Path):
    """The model's tokenizer, or None when the directory ships none (then use token ids)."""
    d = Path(model_dir)
    if not ((d / "tokenizer.json").is_file() or (d / "tokenizer_config.json").is_file()):
        return None
    quiet_transformers()
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(d))
