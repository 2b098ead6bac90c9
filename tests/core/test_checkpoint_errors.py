"""A checkpoint the server cannot read is reported as what is wrong: permission, missing, or corrupt.

Pods run as uid 10001; a checkpoint written by root with mode 0600 was reported as "corrupt safetensors
file ...: No such file or directory". As root, the child runs without CAP_DAC_OVERRIDE (setpriv), so
file modes bind it as they bind a pod's user.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

EAAS = [sys.executable, "-P", "-m", "eaas.cli"]
OTHER_UID = 10001


def run_as_unprivileged(args: list[str]) -> subprocess.CompletedProcess:
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            pytest.fail("running as root needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE", pytrace=False)
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    return subprocess.run(prefix + EAAS + args, capture_output=True, text=True, timeout=300)


def make_unreadable(path: Path) -> None:
    """Mode 0600 owned by another user when we are root (the pod's case), else mode 0000."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
        path.chmod(0o600)
    else:
        path.chmod(0)


@pytest.fixture
def tiny_copy(mixtral_dir):
    folder = Path(tempfile.mkdtemp(prefix="eaas-perm-"))
    try:
        target = folder / "tiny"
        shutil.copytree(mixtral_dir, target)
        yield target
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def expert_server_error(model: Path) -> str:
    done = run_as_unprivileged(["expert-server", "--model", str(model), "--experts", "0-1", "--port", "0"])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("eaas expert-server: error: "), done.stderr
    return lines[0]


@pytest.mark.parametrize("name", ["model.safetensors", "config.json"])
def test_unreadable_file_is_a_permission_error_not_corrupt(tiny_copy, name):
    make_unreadable(tiny_copy / name)
    message = expert_server_error(tiny_copy)
    assert f"cannot read {tiny_copy / name}: permission denied" in message
    assert "corrupt" not in message and "No such file" not in message


def test_corrupt_file_is_still_reported_as_corrupt(tiny_copy):
    (tiny_copy / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert "corrupt safetensors file" in expert_server_error(tiny_copy)


def test_missing_shard_is_reported_missing(tiny_copy):
    (tiny_copy / "model.safetensors").rename(tiny_copy / "model-00001-of-00001.safetensors")
    (tiny_copy / "model.safetensors.index.json").write_text(
        '{"weight_map": {"x": "model-00001-of-00001.safetensors", "y": "model-00002-of-00002.safetensors"}}')
    assert "shard model-00002-of-00002.safetensors listed in the index is missing" in expert_server_error(tiny_copy)
