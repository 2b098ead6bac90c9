"""The disaggregated system (`eaas up`: expert servers as processes + a gateway) generates exactly what
transformers generates, and losing an expert replica mid-stream changes no token and fails no request."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest
import torch
from concurrent_streams import metric, stream_all
from hf_checkpoints import write_hf_checkpoint

from eaas.client import SyncClient

PROMPTS = [[5, 17, 42], list(range(10, 31)), [7] * 9, [100, 3, 250, 9, 1, 2]]


def hf_greedy(model, prompt, max_new):
    out = model.generate(torch.tensor([prompt]), max_new_tokens=max_new, do_sample=False,
                         attention_mask=torch.ones(1, len(prompt), dtype=torch.long))
    return out[0, len(prompt):].tolist()


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_eaas_up_greedy_equals_transformers(arch, tmp_path, up_fleet):
    hf = write_hf_checkpoint(tmp_path / arch, arch, seed=5)
    fleet = up_fleet(tmp_path / arch, experts_per_server=4, replicas=2)
    assert len(fleet.expert_addresses()) == 2 and all(len(a) == 2 for a in fleet.expert_addresses().values())
    results: dict[int, list[int]] = {}

    def run(i):  # concurrent streams: they share the gateway's batches
        with SyncClient(fleet.gateways, timeout=120) as client:
            results[i] = client.generate(prompt_ids=PROMPTS[i], max_tokens=10).token_ids

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for i, prompt in enumerate(PROMPTS):
        assert results[i] == hf_greedy(hf, prompt, 10), f"{arch} prompt {i}"
    cli = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "generate", "--gateway", fleet.gateways[0],
                          "--prompt-ids", ",".join(map(str, PROMPTS[0])), "--max-tokens", "10", "--temperature", "0",
                          "--json"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["token_ids"] == results[0]


@pytest.mark.slow
def test_sigkill_of_an_expert_replica_mid_stream_changes_no_token(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=6)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=2)
    prompts = [[(i * 13 + j) % 250 + 1 for j in range(4 + i % 5)] for i in range(12)]

    def run_all(on_progress=None) -> dict[int, list[int]]:
        results, errors = stream_all(fleet.gateways, prompts, 40, on_progress, timeout=180, ignore_eos=True)
        assert not errors, errors
        return results

    baseline = run_all()
    victim = fleet.process_listening_on(fleet.expert_addresses()["g0"][0])
    killed = {}

    def kill_mid_stream(tokens):
        if tokens >= 60 and not killed:  # requests are mid-generation, many in one batch
            killed["pid"] = victim.pid
            victim.kill()

    faulted = run_all(kill_mid_stream)
    assert killed, "the replica was never killed"
    assert not victim.is_running() or victim.status() == "zombie"
    assert faulted == baseline
    assert all(len(v) == 40 for v in faulted.values())
    assert metric(fleet.http, "eaas_gateway_expert_rpc_failures_total") >= 1  # the gateway really lost calls to the dead replica and failed over
