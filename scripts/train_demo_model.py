"""Train the built-in demo model: a small byte-level Mixtral (8 experts, top-2) on the Python standard library.

The text is the source of the running Python's standard library (every machine with Python has it), read in
sorted path order; every HOLDOUT_EVERY-th file is held out. Seeded, fixed hyper-parameters, a fixed number of
steps, torch on CPU with a fixed thread count: the run is a pure function of (Python version, torch version,
CPU kernels). Writes an HF checkpoint (transformers' own save_pretrained) with the byte-level tokenizer of
the other built-in tiny models, and prints the per-expert routing popularity on the held-out files.

    .venv/bin/python -P scripts/train_demo_model.py                  # train, write eaas/model/demo/
    .venv/bin/python -P scripts/train_demo_model.py --report-only    # popularity + samples of the written model
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import sys
import sysconfig
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # -P: the repo's eaas/ without an install, like the benchmarks do

from eaas.model.tiny import byte_level_tokenizer, tiny_config  # noqa: E402

SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__phello__", "ensurepip"}
HOLDOUT_EVERY = 20
SIZES = dict(hidden_size=128, layers=4, experts=8, top_k=2)
SEQ_LEN, BATCH = 128, 16
LR, WARMUP, WEIGHT_DECAY, CLIP = 3e-3, 50, 0.1, 1.0
SAMPLE_PROMPTS = ["def ", "import os\n", "The experts"]


def stdlib_files() -> list[Path]:
    """The standard library's .py files (no tests, no vendored or demo packages), in sorted path order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = [p for p in root.rglob("*.py") if not SKIPPED_DIRS & set(p.relative_to(root).parts[:-1])]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """(train bytes, held-out bytes) as uint8 tensors; files are joined by a blank line."""
    train, held = bytearray(), bytearray()
    for i, path in enumerate(stdlib_files()):
        (held if i % HOLDOUT_EVERY == 0 else train).extend(path.read_bytes() + b"\n\n")
    return torch.frombuffer(train, dtype=torch.uint8).long(), torch.frombuffer(held, dtype=torch.uint8).long()


def learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = (step - WARMUP) / max(1, steps - WARMUP)
    return LR * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(steps: int, seed: int, aux_coef: float, log_every: int) -> tuple[torch.nn.Module, dict]:
    import transformers

    data, _ = corpus()
    torch.manual_seed(seed)
    config = tiny_config("mixtral", **SIZES, router_aux_loss_coef=aux_coef, output_router_logits=aux_coef > 0)
    model = transformers.MixtralForCausalLM(config).train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}],
                            lr=LR, betas=(0.9, 0.95))
    windows = torch.Generator().manual_seed(seed)
    start, cpu_start, losses = time.monotonic(), time.process_time(), []
    for step in range(steps):
        offsets = torch.randint(0, len(data) - SEQ_LEN - 1, (BATCH,), generator=windows)
        batch = torch.stack([data[o:o + SEQ_LEN] for o in offsets.tolist()])
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, steps)
        out = model(input_ids=batch, labels=batch)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
        opt.step()
        # the language-model loss alone (out.loss includes the auxiliary loss when it is on)
        lm = out.loss.item() - (aux_coef * out.aux_loss.item() if aux_coef > 0 else 0.0)
        losses.append(lm)
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {lm:.4f}  lr {learning_rate(step, steps):.5f}  "
                  f"{time.monotonic() - start:7.1f}s", flush=True)
    model.config.output_router_logits = False
    tail = losses[-50:]
    return model.eval(), {"wall_s": round(time.monotonic() - start, 1),
                          "cpu_s": round(time.process_time() - cpu_start, 1), "final_loss": round(losses[-1], 4),
                          "mean_loss_last_50_steps": round(sum(tail) / len(tail), 4)}


@torch.no_grad()
def routing_popularity(model, held: torch.Tensor, windows: int = 64, seq: int = 256) -> list[list[float]]:
    """Per layer, the fraction of (token, top-k slot) pairs each expert receives on consecutive held-out windows."""
    cfg = model.config
    counts = torch.zeros(cfg.num_hidden_layers, cfg.num_local_experts)
    for w in range(windows):
        ids = held[w * seq:(w + 1) * seq][None]
        out = model(input_ids=ids, output_router_logits=True)
        for layer, logits in enumerate(out.router_logits):
            top = logits.topk(cfg.num_experts_per_tok, dim=-1).indices.flatten()
            counts[layer] += torch.bincount(top, minlength=cfg.num_local_experts).float()
    return (counts / counts.sum(dim=1, keepdim=True)).tolist()


@torch.no_grad()
def held_out_loss(model, held: torch.Tensor, windows: int = 64, seq: int = 256) -> float:
    losses = [model(input_ids=held[w * seq:(w + 1) * seq][None], labels=held[w * seq:(w + 1) * seq][None]).loss.item()
              for w in range(windows)]
    return sum(losses) / len(losses)


@torch.no_grad()
def samples(model, tokenizer, max_new: int = 120) -> dict[str, dict[str, str]]:
    out = {}
    for prompt in SAMPLE_PROMPTS:
        ids = torch.tensor([tokenizer.encode(prompt)])
        mask = torch.ones_like(ids)
        greedy = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=False)
        torch.manual_seed(0)
        sampled = model.generate(ids, attention_mask=mask, max_new_tokens=max_new, do_sample=True, temperature=0.8,
                                 top_p=0.95, top_k=0)
        out[prompt] = {"greedy": tokenizer.decode(greedy[0, ids.shape[1]:]),
                       "t0.8": tokenizer.decode(sampled[0, ids.shape[1]:])}
    return out


def report(model, tokenizer) -> dict:
    _, held = corpus()
    popularity = routing_popularity(model, held)
    return {"held_out_loss": round(held_out_loss(model, held), 4),
            "popularity": [[round(f, 4) for f in layer] for layer in popularity],
            "max_over_mean": [round(max(layer) * len(layer), 2) for layer in popularity],
            "samples": samples(model, tokenizer)}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / "eaas" / "model" / "demo"), help="checkpoint directory to write")
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, 
                   help="torch threads (default 1: on a shared machine 2 spinning threads ran a step 25x slower)")
    p.add_argument("--aux-loss", type=float, default=0.0, help="router load-balancing loss coefficient")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--report-only", action="store_true", help="load --out and print popularity and samples")
    p.add_argument("--no-report", action="store_true", help="train and write only (for comparing two runs)")
    args = p.parse_args()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    torch.set_num_threads(args.threads)
    import transformers

    out = Path(args.out)
    if args.report_only:
        model = transformers.MixtralForCausalLM.from_pretrained(out).eval()
        facts = {}
    else:
        model, facts = train(args.steps, args.seed, args.aux_loss, args.log_every)
        model.save_pretrained(out)
        byte_level_tokenizer().save_pretrained(out)
        facts.update(command="python -P scripts/train_demo_model.py " + " ".join(sys.argv[1:]), steps=args.steps,
                     seed=args.seed, threads=args.threads, aux_loss=args.aux_loss, torch=torch.__version__,
                     transformers=transformers.__version__, python=platform.python_version(),
                     files=len(stdlib_files()), size_bytes=(out / "model.safetensors").stat().st_size)
    if not args.no_report:
        facts.update(report(model, byte_level_tokenizer()))
    print(json.dumps(facts, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
