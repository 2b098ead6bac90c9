"""Redis key names of one deployment, exactly as docs/redis-schema.md defines them."""

from __future__ import annotations

import math
from dataclasses import dataclass

LOAD_BUCKET_S = 10
LOAD_KEY_TTL_S = 3600


@dataclass(frozen=True)
class DeploymentKeys:
    deployment: str

    def __post_init__(self):
        if not self.deployment or any(c in self.deployment for c in ":*?[] "):
            raise ValueError(f"deployment name {self.deployment!r} cannot be part of a Redis key")

    @property
    def prefix(self) -> str:
        return f"eaas:{self.deployment}:"

    # KV blocks
    def kv_member(self, fingerprint: str, chain_hash: str) -> str:
        """How a block is named in the LRU set and the size hash: `{fingerprint}:{chain_hash}`."""
        return f"{fingerprint}:{chain_hash}"

    @property
    def kv_prefix(self) -> str:
        return f"{self.prefix}kv:"

    def kv_key(self, member: str, chunk: int = 0) -> str:
        """Value key of a block (chunk 0) or of chunk n >= 1 of a value over the chunk size."""
        base = f"{self.kv_prefix}{member}"
        return base if chunk == 0 else f"{base}:{chunk}"

    @property
    def kv_lru(self) -> str:
        return f"{self.prefix}kvlru"

    @property
    def kv_sizes(self) -> str:
        return f"{self.prefix}kvsize"

    @property
    def kv_bytes(self) -> str:
        return f"{self.prefix}kvbytes"

    # Expert replica registry
    def registry(self, address: str) -> str:
        return f"{self.prefix}registry:{address}"

    @property
    def registry_pattern(self) -> str:
        return f"{self.prefix}registry:*"

    # Per-expert load statistics
    def load(self, bucket: int) -> str:
        return f"{self.prefix}load:{bucket}"


def load_bucket(unix_s: float) -> int:
    """Start of the 10-second window that unix_s falls in."""
    return math.floor(unix_s / LOAD_BUCKET_S) * LOAD_BUCKET_S


def complete_load_buckets(now: float, windows: int) -> list[int]:
    """The last `windows` complete buckets before now, newest first (the open window is skipped)."""
    open_bucket = load_bucket(now)
    return [open_bucket - LOAD_BUCKET_S * i for i in range(1, windows + 1)]
