"""`eaas up --api-key` as a user runs it: its gateway refuses callers without the key (gRPC and HTTP),
and `eaas generate --api-key` (or $EAAS_API_KEY) gets its tokens."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from hf_checkpoints import write_hf_checkpoint

KEY = "sk-up-test"


def _generate(gateway: str, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "generate", "--gateway", gateway,
                           "--prompt-ids", "1,17,42", "--max-tokens", "4", "--json", "--timeout", "60", *extra],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.slow
def test_eaas_up_api_key_guards_grpc_and_http(tmp_path, up_fleet, monkeypatch):
    monkeypatch.delenv("EAAS_API_KEY", raising=False)
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=13)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, extra=["--api-key", KEY])
    gateway = fleet.gateways[0]
    env = {k: v for k, v in os.environ.items() if k != "EAAS_API_KEY"}

    refused = _generate(gateway, env=env)
    assert refused.returncode != 0 and "UNAUTHENTICATED" in refused.stderr, refused.stderr
    wrong = _generate(gateway, "--api-key", "wrong", env=env)
    assert wrong.returncode != 0 and "UNAUTHENTICATED" in wrong.stderr

    ok = _generate(gateway, "--api-key", KEY, env=env)
    assert ok.returncode == 0, ok.stderr
    by_env = _generate(gateway, env={**env, "EAAS_API_KEY": KEY})
    assert by_env.returncode == 0 and json.loads(by_env.stdout)["token_ids"] == json.loads(ok.stdout)["token_ids"]

    body = json.dumps({"prompt": [1, 17, 42], "max_tokens": 2}).encode()
    request = urllib.request.Request(f"{fleet.http}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(request, timeout=60)
    assert err.value.code == 401 and json.load(err.value)["error"]["code"] == "invalid_api_key"
    request.add_header("Authorization", f"Bearer {KEY}")
    assert urllib.request.urlopen(request, timeout=60).status == 200
    assert urllib.request.urlopen(f"{fleet.http}/health", timeout=10).status == 200  # probes stay open
    assert "--api-key" not in " ".join(fleet.gateway_process().cmdline())  # the key is not in `ps`
