"""A Secret volume laid out and updated as the kubelet's AtomicWriter does it: the files are symlinks
`<key> -> ..data/<key>`, `..data` is a symlink to a timestamped directory, and an update writes a new
directory, points `..data_tmp` at it, renames `..data_tmp` over `..data` and removes the old directory."""

from __future__ import annotations

import itertools
import os
import shutil
from pathlib import Path

_versions = itertools.count(1)


class SecretVolume:
    def __init__(self, directory: Path, files: dict[str, bytes]):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.update(files)
        for name in files:
            (directory / name).symlink_to(Path("..data") / name)

    def path(self, name: str) -> Path:
        return self.directory / name

    def update(self, files: dict[str, bytes]) -> None:
        data = self.directory / "..data"
        old = (self.directory / os.readlink(data)) if data.is_symlink() else None
        fresh = self.directory / f"..2026_12_01_00_00_00.{next(_versions)}"
        fresh.mkdir()
        for name, content in files.items():
            (fresh / name).write_bytes(content)
            os.chmod(fresh / name, 0o600)
        tmp = self.directory / "..data_tmp"
        tmp.symlink_to(fresh.name)
        os.replace(tmp, data)  # the one atomic step: every file now leads into the new directory
        if old is not None:
            shutil.rmtree(old)
