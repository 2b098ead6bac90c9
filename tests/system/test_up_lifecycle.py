"""`eaas up` as `make run` uses it (--demo), and its shutdown: SIGTERM stops every process it started."""

from __future__ import annotations

import subprocess
import sys

import psutil
import pytest
from hf_checkpoints import write_hf_checkpoint
from servers import free_port_run


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
    assert "demo: 24 tokens, finish_reason=length" in proc.stdout
    assert ("'The experts'" if with_tokenizer else "[1, 17, 42]") in proc.stdout


@pytest.mark.slow
def test_sigterm_stops_every_process_eaas_up_started(tmp_path, up_fleet):
    write_hf_checkpoint(tmp_path / "m", "mixtral", seed=13)
    fleet = up_fleet(tmp_path / "m", experts_per_server=4, replicas=2)
    children = psutil.Process(fleet.proc.pid).children(recursive=True)
    assert len(children) == 5  # 4 expert servers + 1 gateway
    assert fleet.stop() == 0
    gone, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, [p.cmdline() for p in alive]
