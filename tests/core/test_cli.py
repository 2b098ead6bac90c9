"""The `eaas` command as a user runs it: tiny-model, generate, --help and one-line errors."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

EAAS = [sys.executable, "-P", "-m", "eaas.cli"]


def eaas(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(EAAS + list(args), capture_output=True, text=True, timeout=300)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "tiny"
    eaas("tiny-model", str(out), "--arch", "qwen2_moe", "--seed", "3")
    return out


def test_tiny_model_then_generate_json_matches_transformers(tiny_dir):
    from transformers import AutoModelForCausalLM

    proc = eaas("generate", "--model", str(tiny_dir), "--prompt-ids", "1,17,42", "--max-tokens", "24",
                "--temperature", "0", "--json")
    result = json.loads(proc.stdout)
    hf = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    ref = hf.generate(torch.tensor([[1, 17, 42]]), max_new_tokens=24, do_sample=False,
                      attention_mask=torch.ones(1, 3, dtype=torch.long))[0, 3:].tolist()
    assert result["token_ids"] == ref
    assert result["finish_reason"] in ("stop", "length")
    assert isinstance(result["text"], str)


def test_generate_from_text_prompt_streams_text(tiny_dir):
    proc = eaas("generate", "--model", str(tiny_dir), "--prompt", "Hello", "--max-tokens", "5", "--ignore-eos")
    assert "5 tokens, finish_reason=length" in proc.stderr
    assert proc.stdout.strip() != ""


def test_help_of_every_subcommand():
    from eaas.cli import SUBCOMMANDS

    top = eaas("--help").stdout
    for name in SUBCOMMANDS:
        assert name in top
        sub = eaas(name, "--help").stdout
        assert sub.startswith(f"usage: eaas {name}"), name


def test_gateway_and_up_state_the_same_micro_batch_default_they_use():
    from eaas.gateway.server import GatewayOptions
    from eaas.rpc.micro_batches import DEFAULT_MICRO_BATCH_MIN_TOKENS, DEFAULT_MICRO_BATCHES, default_micro_batches

    opts = GatewayOptions(model="m")
    assert opts.micro_batches is None and opts.micro_batch_min_tokens == DEFAULT_MICRO_BATCH_MIN_TOKENS
    assert default_micro_batches("auto") == default_micro_batches("shm") == DEFAULT_MICRO_BATCHES
    assert default_micro_batches("grpc") == 1
    for name in ("gateway", "up"):
        text = " ".join(eaas(name, "--help").stdout.split())
        after = text.split("--micro-batches MICRO_BATCHES", 2)[2]
        assert f"(default {DEFAULT_MICRO_BATCHES} with --transport auto or shm, 1 with grpc" in after, name
        after = text.split("--micro-batch-min-tokens MICRO_BATCH_MIN_TOKENS", 2)[2]
        assert f"(default {DEFAULT_MICRO_BATCH_MIN_TOKENS}" in after, name
    for name in ("gateway", "up"):
        for flag in ("--micro-batches", "--micro-batch-min-tokens"):
            where = ["--expert-servers", "127.0.0.1:1"] if name == "gateway" else []
            proc = eaas(name, "--model", "tiny-mixtral", *where, flag, "0", check=False)
            assert proc.returncode != 0 and f"{flag} must be >= 1, got 0" in proc.stderr, (name, flag, proc.stderr)
            assert "Traceback" not in proc.stderr


def one_line_error(proc) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("eaas")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_bad_inputs_give_one_line_errors(tiny_dir, tmp_path):
    gen = ["generate", "--prompt-ids", "1,2", "--max-tokens", "4", "--model"]
    assert "outside the vocabulary" in one_line_error(
        eaas("generate", "--model", str(tiny_dir), "--prompt-ids", "1,99999", check=False))
    assert "exceeds the model's context" in one_line_error(
        eaas("generate", "--model", str(tiny_dir), "--prompt-ids", "1", "--max-tokens", "100000", check=False))
    assert "comma-separated integers" in one_line_error(
        eaas("generate", "--model", str(tiny_dir), "--prompt-ids", "1,x", check=False))
    assert "does not exist" in one_line_error(eaas(*gen, str(tmp_path / "missing"), check=False))

    unknown = tmp_path / "unknown"
    shutil.copytree(tiny_dir, unknown)
    cfg = json.loads((unknown / "config.json").read_text())
    cfg["model_type"] = "gpt_bigbird"
    (unknown / "config.json").write_text(json.dumps(cfg))
    assert "unsupported architecture 'gpt_bigbird'" in one_line_error(eaas(*gen, str(unknown), check=False))

    no_weights = tmp_path / "noweights"
    shutil.copytree(tiny_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    assert "no *.safetensors" in one_line_error(eaas(*gen, str(no_weights), check=False))

    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_dir, corrupt)
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "corrupt safetensors" in one_line_error(eaas(*gen, str(corrupt), check=False))

    mismatch = tmp_path / "mismatch"
    shutil.copytree(tiny_dir, mismatch)
    tensors = load_file(mismatch / "model.safetensors")
    tensors["model.norm.weight"] = torch.ones(7)
    save_file(tensors, mismatch / "model.safetensors", metadata={"format": "pt"})
    assert "shape mismatch for model.norm.weight" in one_line_error(eaas(*gen, str(mismatch), check=False))


def test_text_prompt_without_tokenizer_is_refused(tiny_dir, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_dir / name, bare / name)
    err = one_line_error(eaas("generate", "--model", str(bare), "--prompt", "hi", check=False))
    assert "has no tokenizer" in err
    ok = json.loads(eaas("generate", "--model", str(bare), "--prompt-ids", "4,5", "--max-tokens", "3",
                         "--ignore-eos", "--json").stdout)
    assert len(ok["token_ids"]) == 3 and ok["text"] is None


def test_sharded_checkpoint_with_index_loads(tmp_path):
    from hf_checkpoints import write_hf_checkpoint

    model = write_hf_checkpoint(tmp_path / "one", "mixtral", seed=4)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="40KB")  # transformers' own sharding + index
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "sharded").glob("*.safetensors"))) > 3
    runs = [json.loads(eaas("generate", "--model", str(tmp_path / d), "--prompt-ids", "3,4,5", "--max-tokens", "6",
                            "--ignore-eos", "--json").stdout)["token_ids"] for d in ("one", "sharded")]
    assert runs[0] == runs[1] and len(runs[0]) == 6


def test_hf_uri_is_fetched_through_the_hub_cache_or_refused_clearly(tmp_path, monkeypatch):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    proc = subprocess.run(EAAS + ["generate", "--model", "hf://eaas-test/absent-model", "--prompt-ids", "1"],
                          capture_output=True, text=True, timeout=120, env={**__import__("os").environ, **env})
    assert "cannot fetch hf://eaas-test/absent-model" in one_line_error(proc)


# `eaas gateway` whose serving loop fails with `error` (what a bug, or a user-fixable problem, raises there)
GATEWAY_FAILING_WITH = """
import sys
import eaas.gateway.server as server
from eaas.errors import UserError

async def serve(self):
    raise {error}

server.Gateway.serve = serve
from eaas.cli import main
sys.exit(main(sys.argv[1:]))
"""


def gateway_failing_with(error: str, tiny_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-c", GATEWAY_FAILING_WITH.format(error=error), "gateway",
                           "--model", str(tiny_dir), "--expert-servers", "0-7=127.0.0.1:1"],
                          capture_output=True, text=True, timeout=300)


def test_gateway_internal_error_shows_its_traceback_and_exits_1(tiny_dir):
    proc = gateway_failing_with("RuntimeError('engine invariant broken')", tiny_dir)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback (most recent call last)" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "RuntimeError: engine invariant broken"
    assert "eaas gateway: error:" not in proc.stderr


def test_gateway_user_error_is_one_line_and_exit_2(tiny_dir):
    proc = gateway_failing_with("UserError('--grpc-port 50050: cannot listen on 0.0.0.0:50050')", tiny_dir)
    assert one_line_error(proc) == "eaas gateway: error: --grpc-port 50050: cannot listen on 0.0.0.0:50050"


def test_gateway_without_replicas_for_every_expert_is_a_user_error(tiny_dir):
    import asyncio

    from eaas.errors import UserError
    from eaas.gateway.server import Gateway, GatewayOptions

    gateway = Gateway(GatewayOptions(model=str(tiny_dir), expert_servers="0-3=127.0.0.1:1"))
    with pytest.raises(UserError, match=r"no expert replicas for every expert after 0s \(have experts 0-3 of 0-7\)"):
        asyncio.run(gateway._wait_for_table(timeout_s=0))
