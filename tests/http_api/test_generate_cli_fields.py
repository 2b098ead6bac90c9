"""`eaas generate` as a user runs it, with every field of the gRPC GenerateRequest as a flag: the in-process
engine (--model) and a real gateway (--gateway, the gRPC server over the same checkpoint) give the same
token ids, text, finish_reason and logprobs; each field changes the output; bad values end in one line."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import subprocess
import sys

import pytest
from gateway_grpc import grpc_gateway

from eaas.client.common import build_request
from eaas.engine.sampling_params import MAX_LOGPROBS, SamplingParams

EAAS = [sys.executable, "-P", "-m", "eaas.cli", "generate"]
ENV = {k: v for k, v in os.environ.items() if k != "EAAS_API_KEY"}  # the test gateway has no key
PROMPT_IDS = "72,101,108,108,111,44,32"  # "Hello, " in the byte-level tokenizer
GREEDY = ["--prompt-ids", PROMPT_IDS, "--max-tokens", "8", "--ignore-eos"]
# seeded sampling of "Hello, " draws "k]\x18`\x04&..." one byte token at a time (test_sdk_generate_fields.py)
SAMPLED = ["--prompt", "Hello, ", "--max-tokens", "20", "--temperature", "1.0", "--seed", "2", "--ignore-eos"]
# with seed 3 the second token is 140 and the fifth EOS (257)
SEED3 = ["--prompt", "Hello, ", "--max-tokens", "12", "--temperature", "1.0", "--seed", "3"]

# flags -> what both paths must give (None: checked against the plain run instead)
SAME_ON_BOTH_PATHS = {
    "stop string spanning three tokens": (SAMPLED + ["--stop", "]\x18`", "--stop", "zz"],
                                          {"text": "k", "finish_reason": "stop", "token_ids": [107, 93, 24, 96]}),
    "min_tokens holds off a stop string": (SAMPLED + ["--max-tokens", "6", "--stop", "]", "--min-tokens", "3"],
                                           {"text": "k]\x18`\x04&", "finish_reason": "length"}),
    "stop token id": (SEED3 + ["--stop-token-ids", "140"], {"finish_reason": "stop"}),
    "min_tokens holds off a stop token id and EOS": (SEED3 + ["--stop-token-ids", "140", "--min-tokens", "8"],
                                                     None),
    "presence penalty with logprobs": (GREEDY + ["--presence-penalty", "0.4", "--logprobs", "3"], None),
}


def generate(*flags: str) -> subprocess.CompletedProcess:
    return subprocess.run(EAAS + list(flags), capture_output=True, text=True, timeout=300, env=ENV)


def generate_json(*flags: str) -> dict:
    proc = generate(*flags, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


async def generate_json_through(address: str, *flags: str) -> dict:
    """`eaas generate --gateway`, run while this event loop serves the gateway."""
    proc = await asyncio.create_subprocess_exec(*EAAS, "--gateway", address, *flags, "--json", env=ENV,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    assert proc.returncode == 0, err.decode()
    return json.loads(out)


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("eaas")]
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def plain_runs(tiny_model_dir):
    """The same requests without the field under test, in-process."""
    return {"greedy": generate_json("--model", str(tiny_model_dir), *GREEDY),
            "seed3": generate_json("--model", str(tiny_model_dir), *SEED3)}


@pytest.mark.asyncio
@pytest.mark.parametrize("case", sorted(SAME_ON_BOTH_PATHS))
async def test_local_and_gateway_paths_give_the_same_completion(tiny_model_dir, service, plain_runs, case):
    flags, want = SAME_ON_BOTH_PATHS[case]
    local = generate_json("--model", str(tiny_model_dir), *flags)
    async with grpc_gateway(service) as address:
        remote = await generate_json_through(address, *flags)
    fields = ("token_ids", "text", "finish_reason", "logprobs")
    assert {k: local.get(k) for k in fields} == {k: remote.get(k) for k in fields}
    assert local["completion_tokens"] == len(local["token_ids"])
    assert {k: local[k] for k in want or {}} == (want or {})
    if case == "stop token id":
        assert local["token_ids"] == plain_runs["seed3"]["token_ids"][:2]
        assert plain_runs["seed3"]["token_ids"][1] == 140 and len(plain_runs["seed3"]["token_ids"]) == 5
    if case.startswith("min_tokens holds off a stop token"):
        assert len(local["token_ids"]) >= 8 and not {140, 257} & set(local["token_ids"][:8])
    if case.startswith("presence penalty"):
        assert local["token_ids"] != plain_runs["greedy"]["token_ids"]
        assert "logprobs" not in plain_runs["greedy"]  # asked for nothing, got nothing
        assert [e["token_id"] for e in local["logprobs"]] == local["token_ids"]
        for entry in local["logprobs"]:
            tops = [lp for _, lp in entry["top"]]
            assert len(tops) == 3 and tops == sorted(tops, reverse=True) and entry["logprob"] <= tops[0]


@pytest.mark.parametrize("flags", [["--frequency-penalty", "0.9"], ["--repetition-penalty", "1.5"]])
def test_each_penalty_changes_the_output(tiny_model_dir, plain_runs, flags):
    got = generate_json("--model", str(tiny_model_dir), *GREEDY, *flags)
    assert got["token_ids"] != plain_runs["greedy"]["token_ids"]


def test_a_stop_string_is_never_printed(tiny_model_dir):
    proc = generate("--model", str(tiny_model_dir), *SAMPLED, "--stop", "\x18`")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "k]\n"
    assert "[4 tokens, finish_reason=stop" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--logprobs", str(MAX_LOGPROBS + 1)], f"--logprobs must be in [0, {MAX_LOGPROBS}], got {MAX_LOGPROBS + 1}"),
    (["--logprobs", "-1"], "--logprobs must be in"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be a finite number > 0"),
    (["--presence-penalty", "2.5"], "--presence-penalty must be in [-2, 2]"),
    (["--frequency-penalty", "nan"], "--frequency-penalty must be in [-2, 2]"),
    (["--min-tokens", "9"], "--min-tokens must be in [0, --max-tokens=8], got 9"),
    (["--stop-token-ids", "3,x"], "--stop-token-ids must be comma-separated integers"),
    (["--stop-token-ids", str(2**40)], "is not a token id"),
    (["--stop="], "--stop: stop strings must be non-empty"),
])
def test_bad_values_end_in_one_line(tiny_model_dir, flags, message):
    assert message in one_line_error(generate("--model", str(tiny_model_dir), *GREEDY, *flags))


def test_bad_values_are_refused_before_a_gateway_is_dialled():
    # nothing listens on port 1: the flag is refused first, by the engine's own rules
    err = one_line_error(generate("--gateway", "127.0.0.1:1", *GREEDY, "--logprobs", "21"))
    assert "--logprobs must be in [0, 20], got 21" in err


@pytest.mark.asyncio
async def test_the_gateway_refuses_an_empty_stop_string_in_one_line(service):
    async with grpc_gateway(service) as address:
        proc = await asyncio.create_subprocess_exec(*EAAS, "--gateway", address, *GREEDY, "--stop=", env=ENV,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        _, err = await asyncio.wait_for(proc.communicate(), 300)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1
    assert lines[0] == "eaas generate: error: INVALID_ARGUMENT: stop strings must be non-empty"


def test_stop_strings_without_a_tokenizer_are_refused(tiny_model_dir, tmp_path):
    for name in ("config.json", "model.safetensors"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    err = one_line_error(generate("--model", str(tmp_path), *GREEDY, "--stop", "a"))
    assert "has no tokenizer, which --stop needs" in err


def test_help_states_the_defaults_the_engine_and_sdk_use():
    from eaas.cli import build_parser

    args = build_parser("generate").parse_args(["generate", "--model", "m", "--prompt-ids", "1"])
    engine = SamplingParams()
    sdk = {name: p.default for name, p in inspect.signature(build_request).parameters.items()}
    for field in ("max_tokens", "temperature", "top_p", "seed", "ignore_eos", "min_tokens", "presence_penalty",
                  "frequency_penalty", "repetition_penalty", "logprobs"):
        assert getattr(args, field) == getattr(engine, field) == sdk[field], field
    assert (args.stop, args.stop_token_ids) == (None, None)
    help_text = subprocess.run(EAAS + ["--help"], capture_output=True, text=True, check=True).stdout
    entries = {" ".join(e.split()[:2]): " ".join(e.split()) for e in re.split(r"\n  (?=-)", help_text)}
    for flag, default in [("--stop TEXT", "default: none"), ("--stop-token-ids IDS", "default: none"),
                          ("--min-tokens N", "default 0"), ("--presence-penalty X", "default 0.0 = off"),
                          ("--frequency-penalty X", "default 0.0 = off"),
                          ("--repetition-penalty X", "default 1.0 = off"),
                          ("--logprobs N", "default: none")]:
        assert default in entries[flag], entries.get(flag)
