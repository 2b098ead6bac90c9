"""The gateway's memory limits: how many KV blocks the engine preallocates (a byte budget, by default a
share of the machine's memory), and how many requests may wait for it (queued requests hold no KV)."""

from __future__ import annotations

import os

from eaas.engine.block_manager import blocks_for

DEFAULT_SHARE = 0.10       # of physical memory, when the engine runs on CPU (the gateway does today)
DEFAULT_GPU_SHARE = 0.50   # of the GPU's free memory after the weights are loaded, on CUDA
DEFAULT_MAX_QUEUED = 1024  # requests waiting beyond this are refused (HTTP 429 / RESOURCE_EXHAUSTED)


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def default_kv_cache_bytes(device: str = "cpu") -> int:
    if str(device).startswith("cuda"):
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free * DEFAULT_GPU_SHARE)
    return int(machine_memory_bytes() * DEFAULT_SHARE)


def describe_default() -> str:
    """The default, in words and bytes, for --help."""
    return (f"{DEFAULT_SHARE:.0%} of this machine's memory = {default_kv_cache_bytes() / 2**30:.1f} GiB "
            f"on CPU; {DEFAULT_GPU_SHARE:.0%} of the GPU's free memory on CUDA")


def num_blocks_in_budget(budget_bytes: int, block_bytes: int, block_size: int, max_num_seqs: int,
                         max_positions: int) -> int:
    """Blocks that fit the budget, but no more than max_num_seqs full contexts could ever use."""
    useful = max_num_seqs * blocks_for(max_positions, block_size)
    return max(1, min(budget_bytes // block_bytes, useful))
