"""The dense side of an MoE model: transformers' own modules with routed experts swapped for a backend.

The model is built on the meta device, every `layer.mlp.experts` is replaced by `RoutedExperts` (no
weights), and only the remaining tensors are read from the checkpoint: a gateway never loads a routed
expert. Attention runs through eaas' packed attention (see eaas/engine/attention.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from eaas.errors import UserError
from eaas.model.backend import ExpertBackend, RoutedExperts
from eaas.model.checkpoint import Checkpoint


@dataclass
class DenseModel:
    """transformers' decoder with remote-able experts, plus the facts the engine needs."""

    hf: nn.Module                 # the XForCausalLM

    @property
    def config(self):
        return self.hf.config

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    @property
    def max_positions(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 1 << 30))

    @property
    def eos_token_ids(self) -> set[int]:
        eos = getattr(self.config, "eos_token_id", None)
        if eos is None:
            return set()
        ids = {eos} if isinstance(eos, int) else set(eos)
        return {i for i in ids if 0 <= i < self.vocab_size}


def _swap_experts(model: nn.Module, backend: ExpertBackend) -> None:
    """Replace every layer's routed experts by the backend seam."""
    for idx, layer in enumerate(model.model.layers):
        mlp = getattr(layer, "mlp", None)
        if mlp is not None and hasattr(mlp, "experts"):
            mlp.experts = RoutedExperts(idx, backend)


def _keep_fp32_names(model: nn.Module) -> list[str]:
    names = list(getattr(model, "_keep_in_fp32_modules_strict", None) or [])
    names += list(getattr(model, "_keep_in_fp32_modules", None) or [])
    return names


def load_dense_model(ckpt: Checkpoint, backend: ExpertBackend, dtype: torch.dtype = torch.float32) -> DenseModel:
    """Build the dense model of `ckpt` with `backend` at every MoE layer; reads no routed-expert tensor."""
    import transformers

    from eaas.engine.attention import ATTENTION_NAME, register_packed_attention

    register_packed_attention()
    cls = getattr(transformers, ckpt.family.causal_lm_class)
    config = ckpt.config
    config._attn_implementation = ATTENTION_NAME
    with torch.device("meta"):
        model = cls(config)
    _swap_experts(model, backend)
    model.to_empty(device="cpu")
    model.to(dtype)
    # Non-persistent buffers (rotary frequencies) are not in the checkpoint: rebuild them for real.
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)

    fam = ckpt.family
    wanted = {fam.module_key(k): k for k in ckpt.keys() if not fam.is_routed_expert_key(k)}
    expected = set(model.state_dict().keys())
    if config.tie_word_embeddings:
        expected.discard("lm_head.weight")
    missing = sorted(expected - set(wanted))
    if missing:
        raise UserError(f"{ckpt.path}: checkpoint lacks {missing[0]!r}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    tensors = ckpt.read([wanted[k] for k in sorted(expected)], desc="loading dense weights")
    state = {k: tensors[wanted[k]] for k in sorted(expected)}
    own = model.state_dict()
    for k, t in state.items():
        if tuple(t.shape) != tuple(own[k].shape):
            raise UserError(f"shape mismatch for {k}: checkpoint has {tuple(t.shape)}, "
                            f"config expects {tuple(own[k].shape)}")
    model.load_state_dict(state, strict=False)
    for name, p in list(model.named_parameters()) + list(model.named_buffers()):
        if any(keep in name for keep in _keep_fp32_names(model)):
            p.data = state.get(name, p.data).to(torch.float32)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.eval()
    return DenseModel(model)
