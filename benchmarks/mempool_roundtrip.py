"""MemPool insert/match latency and throughput: a real redis-server against the in-process backend.

    python benchmarks/mempool_roundtrip.py                      # starts its own redis-server
    python benchmarks/mempool_roundtrip.py --redis redis://host:6379/0 --blocks 64

The default block set is one 512-token prompt of a 24-layer model with 4 KV heads of 128 dims in
bfloat16 (block_size 16: 32 blocks of 768 KiB = 24 MiB), the size a mid-sized MoE produces.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import tempfile
import time

import torch

from eaas.mempool.kv_pool import KVPool

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def make_blocks(args) -> list[list[torch.Tensor]]:
    shape = (args.kv_heads, args.block_size, args.head_dim)
    return [[torch.randn(shape).to(DTYPES[args.dtype]) for _ in range(2 * args.layers)] for _ in range(args.blocks)]


async def measure(url: str | None, args, blocks) -> dict[str, float]:
    pool = KVPool.from_url(url, deployment="bench", fingerprint="bench", block_size=args.block_size,
                           budget_bytes=None)
    nbytes = sum(t.nbytes for b in blocks for t in b)
    inserts, matches = [], []
    for rep in range(args.repeats):
        tokens = [rep * 1_000_000 + i for i in range(args.blocks * args.block_size)]  # a fresh prompt each time
        start = time.perf_counter()
        assert await pool.insert(tokens, blocks) == len(blocks)
        inserts.append(time.perf_counter() - start)
        start = time.perf_counter()
        n, got = await pool.match(tokens)
        matches.append(time.perf_counter() - start)
        assert n == len(tokens) and torch.equal(got[-1][-1], blocks[-1][-1])
        await pool.delete(tokens)
    await pool.close()
    insert_s, match_s = statistics.median(inserts), statistics.median(matches)
    return {"insert_ms": insert_s * 1e3, "insert_MBps": nbytes / insert_s / 1e6,
            "match_ms": match_s * 1e3, "match_MBps": nbytes / match_s / 1e6}


def start_redis() -> tuple[subprocess.Popen, str, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found: bash scripts/install-redis.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data_dir = tempfile.mkdtemp(prefix="eaas-bench-redis-")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", data_dir], stdout=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0", data_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis", help="use this Redis instead of starting one")
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--blocks", type=int, default=32)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    blocks = make_blocks(args)
    block_bytes = sum(t.nbytes for t in blocks[0])
    print(f"{args.blocks} blocks x {len(blocks[0])} tensors {list(blocks[0][0].shape)} {args.dtype} = "
          f"{block_bytes / 2**10:.0f} KiB/block, {args.blocks * block_bytes / 2**20:.1f} MiB per prompt; "
          f"median of {args.repeats}")
    proc = data_dir = None
    url = args.redis
    if url is None:
        proc, url, data_dir = start_redis()
    try:
        for name, target in (("in-process", None), (f"redis {url}", url)):
            r = asyncio.run(measure(target, args, blocks))
            print(f"{name:<34} insert {r['insert_ms']:7.1f} ms {r['insert_MBps']:7.0f} MB/s   "
                  f"match {r['match_ms']:7.1f} ms {r['match_MBps']:7.0f} MB/s")
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
