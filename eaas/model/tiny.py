"""`eaas tiny-model`: write a small random MoE checkpoint in HF layout, with a byte-level tokenizer.

The weights are written by transformers' own `save_pretrained`, so the files are exactly what a real
checkpoint of that family looks like on disk; only the sizes are small.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from eaas.errors import UserError

ARCHES = ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v3")
BOS_ID, EOS_ID, PAD_ID = 256, 257, 258  # after the 256 byte tokens
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def tiny_config(arch: str, hidden_size: int = 64, layers: int = 3, experts: int = 8, top_k: int = 2,
                vocab_size: int = 320, max_positions: int = 2048, **overrides):
    """A small config of `arch` (a transformers PretrainedConfig), valid for every family."""
    import transformers

    common = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=max_positions, tie_word_embeddings=False,
                  bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID, num_experts_per_tok=top_k)
    ffn = hidden_size * 3 // 2
    per_arch = {
        "mixtral": ("MixtralConfig", dict(intermediate_size=ffn, num_local_experts=experts, sliding_window=None)),
        "qwen2_moe": ("Qwen2MoeConfig", dict(intermediate_size=2 * ffn, moe_intermediate_size=ffn,
                                             shared_expert_intermediate_size=2 * ffn, num_experts=experts)),
        "qwen3_moe": ("Qwen3MoeConfig", dict(intermediate_size=2 * ffn, moe_intermediate_size=ffn, num_experts=experts,
                                             head_dim=hidden_size // 4)),
        "olmoe": ("OlmoeConfig", dict(intermediate_size=ffn, num_experts=experts)),
        "deepseek_v3": ("DeepseekV3Config", dict(intermediate_size=2 * ffn, moe_intermediate_size=ffn,
                                                 n_routed_experts=experts, n_shared_experts=1, n_group=2, topk_group=1,
                                                 first_k_dense_replace=1, q_lora_rank=hidden_size // 2,
                                                 kv_lora_rank=hidden_size // 4, qk_rope_head_dim=8,
                                                 qk_nope_head_dim=hidden_size // 8, v_head_dim=hidden_size // 4,
                                                 routed_scaling_factor=2.5, num_key_value_heads=4)),
    }
    if arch not in per_arch:
        raise UserError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHES)}")
    cls_name, extra = per_arch[arch]
    kwargs = {**common, **extra, **overrides}
    return getattr(transformers, cls_name)(**kwargs)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the alphabet of the ByteLevel pre-tokenizer)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer():
    """A byte-level tokenizer (256 byte tokens + <s>, </s>, <pad>) as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    mapping = _bytes_to_unicode()  # the printable stand-in ByteLevel uses for each byte
    vocab = {mapping[b]: b for b in range(256)}
    vocab.update({"<s>": BOS_ID, "</s>": EOS_ID, "<pad>": PAD_ID})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tiny_model(out_dir: str | Path, arch: str, seed: int = 0, **sizes) -> Path:
    import torch
    import transformers

    out = Path(out_dir)
    config = tiny_config(arch, **sizes)
    torch.manual_seed(seed)
    model = getattr(transformers, type(config).__name__.replace("Config", "ForCausalLM"))(config)
    model.save_pretrained(out)
    byte_level_tokenizer().save_pretrained(out)
    return out


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if missing)")
    p.add_argument("--arch", required=True, choices=ARCHES, help="model family")
    p.add_argument("--seed", type=int, default=0, help="random seed of the weights (default 0)")
    p.add_argument("--hidden-size", type=int, default=64, help="hidden size (default 64)")
    p.add_argument("--layers", type=int, default=3, help="decoder layers (default 3)")
    p.add_argument("--experts", type=int, default=8, help="routed experts per MoE layer (default 8)")
    p.add_argument("--top-k", type=int, default=2, help="experts per token (default 2)")


def run(args) -> int:
    import logging

    if args.hidden_size < 32 or args.hidden_size % 32:
        raise UserError("--hidden-size must be a positive multiple of 32")
    if args.experts < 2 or not 1 <= args.top_k <= args.experts:
        raise UserError("need --experts >= 2 and 1 <= --top-k <= --experts")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    out = write_tiny_model(args.out_dir, args.arch, seed=args.seed, hidden_size=args.hidden_size,
                           layers=args.layers, experts=args.experts, top_k=args.top_k)
    files = sorted(p.name for p in out.iterdir())
    print(f"wrote {args.arch} tiny model to {out}: {', '.join(files)}")
    return 0
