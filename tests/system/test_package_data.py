"""A wheel built from the repository carries the data files an installed eaas reads (the built-in demo model)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_wheel_ships_the_demo_model_and_the_planner_profiles(tmp_path):
    build = subprocess.run([sys.executable, "-P", "-m", "pip", "wheel", "--no-build-isolation", "--no-deps",
                            "--no-index", "-q", "-w", str(tmp_path), str(REPO)],
                           capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert build.returncode == 0, build.stdout + build.stderr
    [wheel] = tmp_path.glob("eaas-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json"):
        assert f"eaas/model/demo/{name}" in names
    assert any(n.startswith("eaas/plan/profiles/") and n.endswith(".json") for n in names)
