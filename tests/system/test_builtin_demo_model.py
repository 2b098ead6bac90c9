"""The built-in demo model (eaas/model/demo, trained by scripts/train_demo_model.py): a small HF checkpoint that
ships in the package, whose committed greedy continuation the in-process engine, transformers and `eaas up`
all produce, and that `make run` (= `eaas up --demo`) streams as readable text."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from servers import free_port_run

from eaas.client import SyncClient
from eaas.engine.factory import load_tokenizer, monolithic_engine
from eaas.engine.sequence import SamplingParams
from eaas.up import BUILTIN_DIR, DEMO_PROMPT, DEMO_SAMPLING

PROMPT = "def "
MAX_NEW = 48
# transformers' greedy continuation of PROMPT on the committed weights (torch 2.13.0 CPU)
EXPECTED_GREEDY = "__context(self, self._context, self._context):\n "
HF_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


def test_the_demo_model_is_a_small_byte_level_mixtral_in_hf_layout():
    for name in HF_FILES:
        assert (BUILTIN_DIR / name).is_file(), name
    assert (BUILTIN_DIR / "model.safetensors").stat().st_size < 20 * 2**20
    config = json.loads((BUILTIN_DIR / "config.json").read_text())
    assert config["model_type"] == "mixtral"
    assert (config["num_local_experts"], config["num_experts_per_tok"]) == (8, 2)
    tokenizer = load_tokenizer(BUILTIN_DIR)
    assert tokenizer.encode("déf") == list("déf".encode())  # one token per UTF-8 byte


def test_engine_and_transformers_continue_the_prompt_with_the_committed_greedy_text():
    from transformers import MixtralForCausalLM

    tokenizer = load_tokenizer(BUILTIN_DIR)
    prompt = tokenizer.encode(PROMPT)
    ours = monolithic_engine(BUILTIN_DIR).generate([prompt], SamplingParams(max_tokens=MAX_NEW, ignore_eos=True))[0]
    hf = MixtralForCausalLM.from_pretrained(BUILTIN_DIR).eval()
    ref = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                      max_new_tokens=MAX_NEW, do_sample=False)[0, len(prompt):].tolist()
    assert ours == ref
    assert tokenizer.decode(ours) == EXPECTED_GREEDY


@pytest.mark.slow
def test_eaas_up_without_a_model_serves_the_demo_model_exactly(up_fleet):
    fleet = up_fleet(None, experts_per_server=4, replicas=1)
    assert any(str(BUILTIN_DIR) in line for line in fleet.lines)
    with SyncClient(fleet.gateways, timeout=300) as client:
        done = client.generate(prompt=PROMPT, max_tokens=MAX_NEW, ignore_eos=True)
    assert done.text == EXPECTED_GREEDY


def streamed_text(demo_stdout: str) -> str:
    """The text `eaas up --demo` streamed after the prompt it echoed."""
    start = demo_stdout.index(")\n\n" + DEMO_PROMPT) + 3 + len(DEMO_PROMPT)
    return demo_stdout[start:demo_stdout.rindex("\n\ndemo: ")]


@pytest.mark.slow
def test_make_run_streams_readable_text_that_the_engine_samples_too():
    base = free_port_run(32)
    proc = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "up", "--demo", "--expert-base-port", str(base),
                           "--grpc-port", str(base + 20), "--http-port", str(base + 25)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"demo: {DEMO_SAMPLING['max_tokens']} tokens, finish_reason=length" in proc.stdout
    text = streamed_text(proc.stdout)
    tokenizer = load_tokenizer(BUILTIN_DIR)
    engine = monolithic_engine(BUILTIN_DIR)
    sampled = engine.generate([tokenizer.encode(DEMO_PROMPT)], SamplingParams(**DEMO_SAMPLING))[0]
    assert text == tokenizer.decode(sampled)
    assert max(sampled) < 256  # bytes only: no special or unused ids
    # readable: printable ASCII and newlines (a random model's bytes are mostly not)
    assert sum(c.isascii() and (c.isprintable() or c == "\n") for c in text) >= 0.95 * len(text)
