"""Tiny random MoE checkpoints written by transformers' own save_pretrained: the numerical oracle."""

from __future__ import annotations

import logging

import torch

from eaas.model.tiny import byte_level_tokenizer, tiny_config

logging.getLogger("transformers").setLevel(logging.ERROR)


def write_hf_checkpoint(path, arch: str, seed: int = 0, with_tokenizer: bool = False, **sizes):
    """Random weights saved by transformers itself: the files eaas must read like any HF checkpoint."""
    import transformers

    cfg = tiny_config(arch, **sizes)
    torch.manual_seed(seed)
    model = getattr(transformers, type(cfg).__name__.replace("Config", "ForCausalLM"))(cfg).eval()
    model.save_pretrained(path)
    if with_tokenizer:
        byte_level_tokenizer().save_pretrained(path)
    return model
