"""`eaas up --tls` as a user runs it: it prints its CA; the SDK and `eaas generate` with that CA get exactly
transformers' greedy tokens (gateway TLS, gateway <-> expert servers mutual TLS, shm links over the token
learnt through mTLS); a client without the CA, or speaking plaintext, is refused."""

from __future__ import annotations

import json
import re
import stat
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import torch
from hf_checkpoints import write_hf_checkpoint

from eaas.client import GenerationError, SyncClient

PROMPT = [5, 17, 42]


def _generate(gateway: str, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "generate", "--gateway", gateway,
                           "--prompt-ids", ",".join(map(str, PROMPT)), "--max-tokens", "8", "--json",
                           "--timeout", "30", *extra], capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_eaas_up_tls_serves_exact_tokens_to_clients_with_its_ca(tmp_path, up_fleet):
    hf = write_hf_checkpoint(tmp_path / "m", "mixtral", seed=7)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, extra=["--tls"])
    printed = next(re.search(r"tls: CA (\S+)", line) for line in fleet.lines if "tls: CA" in line)
    ca = Path(printed.group(1))
    assert ca.is_file() and stat.S_IMODE((ca.parent / "tls.key").stat().st_mode) == 0o600
    assert fleet.http.startswith("https://")
    expected = hf.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False,
                           attention_mask=torch.ones(1, len(PROMPT), dtype=torch.long))[0, len(PROMPT):].tolist()

    with SyncClient(fleet.gateways, timeout=120, tls_ca_file=str(ca)) as client:
        assert client.generate(prompt_ids=PROMPT, max_tokens=8).token_ids == expected
    ok = _generate(fleet.gateways[0], "--tls-ca-file", str(ca))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["token_ids"] == expected

    logs = Path(next(re.search(r"logs: (\S+)", line) for line in fleet.lines if "logs: " in line).group(1))
    assert "event=slot_link_open" in (logs / "gateway-0.log").read_text()  # shm, admitted by the mTLS-learnt token

    refused = _generate(fleet.gateways[0])  # plaintext to a TLS port
    assert refused.returncode != 0 and "UNAVAILABLE" in refused.stderr
    with SyncClient(fleet.gateways, timeout=10, retries=0) as plaintext:
        with pytest.raises(GenerationError) as err:
            plaintext.generate(prompt_ids=PROMPT, max_tokens=2)
    assert err.value.code == grpc.StatusCode.UNAVAILABLE
