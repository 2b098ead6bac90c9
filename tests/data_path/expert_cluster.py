"""Test helpers: a tiny Mixtral checkpoint and real `eaas expert-server` subprocesses on 127.0.0.1."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from servers import free_port, wait_for_port

_CHECKPOINTS: dict[int, Path] = {}


def tiny_mixtral(seed: int = 0) -> Path:
    """A random 3-layer, 8-expert, top-2 Mixtral saved with transformers' own classes (cached per process)."""
    if seed not in _CHECKPOINTS:
        import torch
        from transformers import MixtralConfig, MixtralForCausalLM

        root = Path(tempfile.mkdtemp(prefix="eaas-tiny-mixtral-"))
        atexit.register(shutil.rmtree, root, True)
        torch.manual_seed(seed)
        config = MixtralConfig(vocab_size=300, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
                               num_key_value_heads=2, intermediate_size=96, num_local_experts=8,
                               num_experts_per_tok=2, tie_word_embeddings=False, max_position_embeddings=512)
        MixtralForCausalLM(config).save_pretrained(root)
        _CHECKPOINTS[seed] = root
    return _CHECKPOINTS[seed]


class ExpertServer:
    """One `python -m eaas.cli expert-server` process on free ports."""

    def __init__(self, model: Path, experts: str, *extra: str, port: int | None = None):
        self.model, self.experts, self.extra = model, experts, list(extra)
        self.port = port or free_port()
        self.metrics_port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.NamedTemporaryFile(prefix="eaas-expert-server-", suffix=".log", delete=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> ExpertServer:
        cmd = [sys.executable, "-P", "-m", "eaas.cli", "expert-server", "--model", str(self.model), "--experts",
               self.experts, "--host", "127.0.0.1", "--port", str(self.port), "--metrics-port",
               str(self.metrics_port), *self.extra]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def wait_ready(self, timeout: float = 90.0) -> ExpertServer:
        try:
            wait_for_port(self.port, timeout)
        except TimeoutError:
            raise TimeoutError(f"expert server did not start; log:\n{self.output()}") from None
        return self

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 40.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.kill()
        self.log.close()
        os.unlink(self.log.name)


def start_servers(servers: list[ExpertServer]) -> list[ExpertServer]:
    """Start all at once (start-up is mostly imports), then wait for each; if one fails, none is left running."""
    try:
        for s in servers:
            s.start()
        for s in servers:
            s.wait_ready()
    except BaseException:
        for s in servers:
            s.kill()
        raise
    return servers
