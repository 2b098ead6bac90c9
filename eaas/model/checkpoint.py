"""An HF-format checkpoint directory: config.json plus safetensors (single file or sharded index).

Reads only the tensors asked for (`safe_open` memory-maps each shard), so a gateway never touches
routed-expert weights and an expert server reads only its own experts.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from eaas.errors import UserError
from eaas.model.families import Family, family_for

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
_PROGRESS_MIN_BYTES = 256 << 20  # below this a load is quick; no bar


def parse_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return DTYPES[name]


def resolve_model_uri(uri: str | Path) -> Path:
    """A local directory, or `hf://org/name[@revision]` fetched into (or found in) the HF cache."""
    text = str(uri)
    if not text.startswith("hf://"):
        return Path(text)
    repo, _, revision = text[len("hf://"):].partition("@")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, revision=revision or None,
                                      allow_patterns=["*.json", "*.safetensors", "tokenizer*", "*.jinja"]))
    except Exception as exc:  # offline, unknown repo, no access: one line, not a traceback
        raise UserError(f"cannot fetch {text}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def unreadable_reason(path: Path) -> str | None:
    """Why this process cannot read `path` (missing, permission, I/O error), or None when it can.

    safetensors reports every open failure as "No such file or directory": ask the OS first so that a
    checkpoint the pod's user cannot read (mode 0600, another owner) is reported as what it is."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except FileNotFoundError:
        return f"{path} is missing"
    except PermissionError:
        try:
            st = path.stat()
            owner = f"mode {st.st_mode & 0o777:04o}, owner uid {st.st_uid} gid {st.st_gid}"
        except OSError:
            owner = "its folder is not searchable"
        return f"cannot read {path}: permission denied ({owner}; this process runs as uid {os.getuid()} " \
               f"gid {os.getgid()})"
    except IsADirectoryError:
        return f"{path} is a directory, not a file"
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _require_readable(path: Path) -> None:
    reason = unreadable_reason(path)
    if reason:
        raise UserError(reason)


class Checkpoint:
    """Index of one checkpoint directory; tensors are read lazily by key."""

    def __init__(self, path: str | Path):
        self.path = resolve_model_uri(path)
        if not self.path.is_dir():
            raise UserError(f"model directory {str(self.path)!r} does not exist")
        config_file = self.path / "config.json"
        if not config_file.is_file():
            raise UserError(f"{self.path}: no config.json (not an HF checkpoint directory)")
        _require_readable(config_file)
        try:
            self.raw_config = json.loads(config_file.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{config_file}: invalid JSON ({exc})") from None
        self.family: Family = family_for(self.raw_config.get("model_type"))
        self.config = self._load_config()
        self.key_to_file = self._index_tensors()

    def _load_config(self):
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(str(self.path))
        except Exception as exc:  # transformers raises many types for a bad config
            raise UserError(f"{self.path}/config.json: {exc}".splitlines()[0]) from None

    def _shard_files(self) -> list[Path]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            _require_readable(index)
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as exc:
                raise UserError(f"{index}: not a safetensors index ({exc})") from None
            files = sorted({self.path / f for f in weight_map.values()})
        else:
            try:
                files = sorted(f for f in self.path.iterdir() if f.name.endswith(".safetensors"))
            except PermissionError:
                raise UserError(f"cannot list {self.path}: permission denied (this process runs as uid "
                                f"{os.getuid()})") from None
        if not files:
            raise UserError(f"{self.path}: no *.safetensors weights found")
        for f in files:
            if not f.is_file():
                raise UserError(f"{self.path}: shard {f.name} listed in the index is missing")
            _require_readable(f)
        return files

    def _index_tensors(self) -> dict[str, Path]:
        key_to_file: dict[str, Path] = {}
        for f in self._shard_files():
            try:
                with safe_open(str(f), framework="pt") as sf:
                    for key in sf.keys():
                        key_to_file[key] = f
            except Exception as exc:
                raise UserError(f"corrupt safetensors file {f}: {exc}".splitlines()[0]) from None
        return key_to_file

    def keys(self) -> list[str]:
        return list(self.key_to_file)

    def read(self, keys: list[str], dtype: torch.dtype | None = None, desc: str = "loading") -> dict[str, torch.Tensor]:
        """Read `keys` (grouped per shard), cast to `dtype` if given; a progress bar for large loads."""
        missing = [k for k in keys if k not in self.key_to_file]
        if missing:
            raise UserError(f"{self.path}: checkpoint lacks tensor {missing[0]!r}"
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
        by_file: dict[Path, list[str]] = {}
        for k in keys:
            by_file.setdefault(self.key_to_file[k], []).append(k)
        total = sum(f.stat().st_size for f in by_file)
        out: dict[str, torch.Tensor] = {}
        with tqdm(total=len(keys), desc=desc, unit="tensor", disable=total < _PROGRESS_MIN_BYTES or None) as bar:
            for f, file_keys in by_file.items():
                try:
                    with safe_open(str(f), framework="pt") as sf:
                        for k in file_keys:
                            t = sf.get_tensor(k)
                            out[k] = t.to(dtype) if dtype is not None and t.is_floating_point() else t
                            bar.update(1)
                except UserError:
                    raise
                except Exception as exc:
                    raise UserError(f"corrupt safetensors file {f}: {exc}".splitlines()[0]) from None
        return out

    def fingerprint(self) -> str:
        """Identity of these weights: config + every shard's header and edges (cheap; no full hash)."""
        h = hashlib.sha256((self.path / "config.json").read_bytes())
        for f in sorted(set(self.key_to_file.values())):
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                h.update(fh.read(n))
                h.update(fh.read(64 << 10))
                size = f.stat().st_size
                fh.seek(max(8 + n, size - (64 << 10)))
                h.update(fh.read())
        return h.hexdigest()[:16]

    def moe_layers(self) -> list[int]:
        """Layer indices that hold routed experts (read off the tensor names)."""
        layers = []
        for layer in range(self.config.num_hidden_layers):
            if self.family.expert_key(layer, 0, "gate") in self.key_to_file:
                layers.append(layer)
        return layers
