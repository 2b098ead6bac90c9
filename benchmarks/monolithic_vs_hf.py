"""Decode throughput of eaas' monolithic engine vs transformers.generate, same tiny model, batch 32.

    python benchmarks/monolithic_vs_hf.py [--arch mixtral] [--batch 32] [--new-tokens 64] [--experts 8 --top-k 2]

Both run greedy on the same prompts (different lengths) in this process, one after the other; the
ratio is what matters (the machine is shared and noisy). Target: eaas / HF >= 2.0.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time

from eaas.openmp import quiet_idle_workers

quiet_idle_workers()  # as the eaas command does, before torch loads libgomp

import torch  # noqa: E402

from eaas.engine.factory import monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.model.tiny import write_tiny_model


def prompts(batch: int, vocab: int = 250) -> list[list[int]]:
    g = torch.Generator().manual_seed(0)
    return [torch.randint(3, vocab, (int(n),), generator=g).tolist() for n in torch.randint(8, 33, (batch,), generator=g)]


def hf_generate(model, batch_prompts, new_tokens: int, **generate_kwargs) -> tuple[list[list[int]], float]:
    """Greedy generate of the whole batch (left padding, at least new_tokens each) after a 2-token warm-up:
    each row's new tokens (padding included where a row ended early) and the seconds it took."""
    width = max(len(p) for p in batch_prompts)
    ids = torch.full((len(batch_prompts), width), 258)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(batch_prompts):  # left padding, as decoder-only generation needs
        ids[i, width - len(p):] = torch.tensor(p)
        mask[i, width - len(p):] = 1
    with torch.inference_mode():
        model.generate(ids[:2], attention_mask=mask[:2], max_new_tokens=2, do_sample=False, pad_token_id=258,
                       **generate_kwargs)
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=258, **generate_kwargs)
        elapsed = time.perf_counter() - start
    return out[:, width:].tolist(), elapsed


def hf_tokens_per_s(model, batch_prompts, new_tokens: int) -> float:
    outs, elapsed = hf_generate(model, batch_prompts, new_tokens)
    return sum(len(o) for o in outs) / elapsed


def eaas_tokens_per_s(engine, batch_prompts, new_tokens: int) -> float:
    engine.generate(batch_prompts[:2], SamplingParams(max_tokens=2, ignore_eos=True))
    start = time.perf_counter()
    outs = engine.generate(batch_prompts, SamplingParams(max_tokens=new_tokens, ignore_eos=True))
    elapsed = time.perf_counter() - start
    return sum(len(o) for o in outs) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="mixtral")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--hidden-size", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--experts", type=int, default=8, help="routed experts per layer (OLMoE: 64)")
    ap.add_argument("--top-k", type=int, default=2, help="experts per token (OLMoE: 8)")
    args = ap.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(torch.get_num_threads())
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as d:
        write_tiny_model(d, args.arch, seed=0, hidden_size=args.hidden_size, layers=args.layers,
                         experts=args.experts, top_k=args.top_k)
        hf = AutoModelForCausalLM.from_pretrained(d).eval()
        engine = monolithic_engine(d)
        batch = prompts(args.batch)
        ours, theirs = [], []
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            theirs.append(hf_tokens_per_s(hf, batch, args.new_tokens))
            ours.append(eaas_tokens_per_s(engine, batch, args.new_tokens))
    o, t = max(ours), max(theirs)
    print(f"model: tiny {args.arch} (hidden {args.hidden_size}, {args.layers} layers, {args.experts} experts, "
          f"top-{args.top_k}), fp32, CPU, {torch.get_num_threads()} threads")
    print(f"batch {args.batch}, {args.new_tokens} new tokens each, greedy, best of {args.repeats}")
    print(f"transformers.generate : {t:8.1f} tok/s")
    print(f"eaas monolithic       : {o:8.1f} tok/s")
    print(f"ratio eaas / HF       : {o / t:8.2f}  (target >= 2.0)")


if __name__ == "__main__":
    main()
