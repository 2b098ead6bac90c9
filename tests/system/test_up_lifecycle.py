"""`eaas up` as `make run` uses it (--demo), and its shutdown: SIGTERM stops every process it started."""

from __future__ import annotations

import socket
import subprocess
import sys

import psutil
import pytest
from hf_checkpoints import write_hf_checkpoint
from servers import free_port_run

from eaas.client import SyncClient
from eaas.up import DEMO_PROMPT, DEMO_SAMPLING


@pytest.mark.slow
@pytest.mark.parametrize("with_tokenizer", [True, False])
def test_demo_streams_a_completion_and_exits(tmp_path, with_tokenizer):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=12, with_tokenizer=with_tokenizer)
    base = free_port_run(32)
    proc = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "up", "--demo", "--model", str(tmp_path / "m"),
                           "--expert-base-port", str(base), "--grpc-port", str(base + 20),
                           "--http-port", str(base + 25)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 expert groups x 2 replicas (4 expert processes)" in proc.stdout
    assert f"demo: {DEMO_SAMPLING['max_tokens']} tokens, finish_reason=length" in proc.stdout
    assert (repr(DEMO_PROMPT) if with_tokenizer else "[1, 17, 42]") in proc.stdout


@pytest.mark.slow
def test_sigterm_stops_every_process_eaas_up_started(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=13)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=2)
    children = psutil.Process(fleet.proc.pid).children(recursive=True)
    assert len(children) == 5  # 4 expert servers + 1 gateway
    assert fleet.stop() == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]


@pytest.mark.slow
def test_sigkill_of_eaas_up_stops_every_process_it_started(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=13)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1)
    children = psutil.Process(fleet.proc.pid).children(recursive=True)
    assert len(children) == 3  # 2 expert servers + 1 gateway, each in its own session
    fleet.proc.kill()  # no handler runs: only the kernel's parent-death signal can stop them
    fleet.proc.wait()
    gone, alive = psutil.wait_procs(children, timeout=60)
    assert not alive, [p.cmdline() for p in alive]


def test_a_given_port_that_is_taken_is_a_one_line_error(tmp_path):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=13)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        proc = subprocess.run([sys.executable, "-P", "-m", "eaas.cli", "up", "--model", str(tmp_path / "m"),
                               "--grpc-port", str(port)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip().splitlines() == [f"eaas up: error: --grpc-port: port {port} on 127.0.0.1 is already in use"]
    assert "ready" not in proc.stdout


@pytest.mark.slow
def test_two_eaas_up_with_default_ports_both_serve(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=14)
    first = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, default_ports=True)
    second = up_fleet(tmp_path / "m", experts_per_server=4, replicas=1, default_ports=True)
    assert first.gateways != second.gateways
    assert set(first.expert_addresses()["g0"]).isdisjoint(second.expert_addresses()["g0"])
    outputs = []
    for fleet in (first, second):
        with SyncClient(fleet.gateways, timeout=120) as client:
            outputs.append(client.generate(prompt_ids=[1, 17, 42], max_tokens=12, ignore_eos=True).token_ids)
    assert outputs[0] == outputs[1] and len(outputs[0]) == 12
