"""A flood of streaming requests against one gateway: its memory stays bounded, the excess is queued or
refused (429), and it serves normally afterwards.

    python benchmarks/kv_flood.py [--requests 1500 --max-tokens 900 --duration 45] [--kv-cache-bytes 200MiB]

The gateway is a monolithic one (the dense model and every expert in one process, so the flood measures
the gateway's own memory, not expert servers competing for the 2 cores): a child process running the
same pieces as `eaas gateway` (engine from a KV budget, EngineService with its bounded queue and the
in-process MemPool, the OpenAI HTTP app) with `eaas gateway`'s defaults (--max-num-seqs 256,
--max-batched-tokens 4096, --max-queued-requests 1024, --kv-cache-bytes 10% of memory), on a random tiny
Mixtral with a 1,024-token context. The flood: --requests concurrent streaming /v1/completions of
--max-tokens tokens each (distinct 20-token prompts); after --duration seconds every client that is still
waiting disconnects. Meanwhile the gateway's RSS is sampled every 0.25 s. Then a normal request is sent
and its tokens compared with an engine run directly. Prints idle/peak RSS, their delta (target: within
2 GiB of idle), and how many requests were served, streaming, queued and refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

GiB = 2**30
NORMAL_PROMPT = [1, 17, 42]


# --- the gateway (child process) --------------------------------------------------------------------
async def serve(args) -> None:
    from aiohttp import web

    from eaas.engine.factory import load_tokenizer, monolithic_engine
    from eaas.engine.scheduler import ScheduleLimits
    from eaas.gateway.engine_service import EngineService
    from eaas.gateway.openai_http import build_http_app
    from eaas.mempool import SyncKVPool
    from eaas.model.checkpoint import Checkpoint

    engine = monolithic_engine(args.model, limits=ScheduleLimits(256, 4096), kv_cache_bytes=args.kv_cache_bytes)
    pool = SyncKVPool.from_url(None, fingerprint=Checkpoint(args.model).fingerprint(), block_size=16)
    service = EngineService(engine, load_tokenizer(args.model), pool, max_queued_requests=args.max_queued)
    service.start()
    runner = web.AppRunner(build_http_app(service, "tiny"))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(json.dumps({"port": runner.addresses[0][1], "kv_blocks": engine.blocks.num_blocks,
                      "kv_bytes": engine.kv.nbytes}), flush=True)
    await asyncio.Event().wait()


# --- the flood (this process) -----------------------------------------------------------------------
@dataclass
class Tally:
    refused: int = 0
    served: int = 0          # all tokens received
    streaming: int = 0       # some tokens when the flood ended
    queued: int = 0          # accepted, no token yet when the flood ended
    errors: list[str] = field(default_factory=list)
    tokens: int = 0
    preemptions: float = 0.0
    gateway_refused: float = 0.0
    max_queue_depth: float = 0.0


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def one_request(session, url: str, prompt: list[int], max_tokens: int, tally: Tally) -> None:
    got = 0
    try:
        async with session.post(url, json={"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True,
                                           "stream": True}) as resp:
            if resp.status == 429:
                assert resp.headers.get("Retry-After"), "429 without Retry-After"
                tally.refused += 1
                return
            if resp.status != 200:
                tally.errors.append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                return
            async for line in resp.content:
                if line.startswith(b"data: {"):
                    got += 1
                    tally.tokens += 1
        tally.served += got >= max_tokens
    except asyncio.CancelledError:
        if got:
            tally.streaming += 1
        else:
            tally.queued += 1
        raise
    except Exception as exc:  # noqa: BLE001 - counted and printed
        tally.errors.append(repr(exc)[:200])


async def sample_rss(pid: int, samples: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        samples.append(rss_bytes(pid))
        await asyncio.sleep(0.25)


async def sample_queue(session, base: str, depths: list[float], stop: asyncio.Event) -> None:
    """The gateway's own queue depth, once a second."""
    while not stop.is_set():
        depths.append(await metric(session, base, "eaas_gateway_queue_depth"))
        await asyncio.sleep(1.0)


async def metric(session, base: str, name: str) -> float:
    text = await (await session.get(f"{base}/metrics")).text()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


async def flood(args, port: int, pid: int) -> tuple[Tally, list[int], float, list[int]]:
    import aiohttp

    base = f"http://127.0.0.1:{port}"
    tally, samples, stop = Tally(), [], asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=60)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=timeout) as session:
        sampler = asyncio.create_task(sample_rss(pid, samples, stop))
        depths: list[float] = []
        queue_sampler = asyncio.create_task(sample_queue(session, base, depths, stop))
        prompts = [[(7 * i + 13 * j) % 250 + 3 for j in range(20)] for i in range(args.requests)]
        tasks = [asyncio.create_task(one_request(session, f"{base}/v1/completions", p, args.max_tokens, tally))
                 for p in prompts]
        start = time.monotonic()
        done, pending = await asyncio.wait(tasks, timeout=args.duration or None)
        elapsed = time.monotonic() - start
        tally.gateway_refused = await metric(session, base, "eaas_gateway_requests_refused_total")
        tally.max_queue_depth = max(depths, default=0)
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        deadline = time.monotonic() + 120  # the gateway notices the disconnects and frees everything
        while await metric(session, base, "eaas_gateway_requests_in_progress") > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        after = await (await session.post(f"{base}/v1/completions", json={
            "prompt": NORMAL_PROMPT, "max_tokens": 24, "temperature": 0})).json()
        normal = after["choices"][0]["token_ids"]
        tally.preemptions = await metric(session, base, "eaas_gateway_preemptions_total")
        stop.set()
        await sampler
        await queue_sampler
    return tally, samples, elapsed, normal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1500)
    ap.add_argument("--max-tokens", type=int, default=900)
    ap.add_argument("--duration", type=float, default=45.0, help="seconds of flood; 0 = until all are answered")
    ap.add_argument("--kv-cache-bytes", type=int, default=None, help="default: the gateway's (10%% of memory)")
    ap.add_argument("--max-queued", type=int, default=1024)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        return asyncio.run(serve(args))

    from eaas.engine.factory import monolithic_engine
    from eaas.engine.sequence import SamplingParams
    from eaas.model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as d:
        write_tiny_model(d, "mixtral", seed=3, max_positions=1024)
        cmd = [sys.executable, "-P", os.path.abspath(__file__), "--serve", "--model", d,
               "--max-queued", str(args.max_queued)]
        if args.kv_cache_bytes:
            cmd += ["--kv-cache-bytes", str(args.kv_cache_bytes)]
        gw = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        try:
            ready = json.loads(gw.stdout.readline())
            time.sleep(2.0)
            idle = rss_bytes(gw.pid)
            tally, samples, elapsed, normal = asyncio.run(flood(args, ready["port"], gw.pid))
            final = rss_bytes(gw.pid)
        finally:
            gw.terminate()
            gw.wait(30)
        expected = monolithic_engine(d).generate([NORMAL_PROMPT], SamplingParams(max_tokens=24))[0]
    peak = max(samples + [idle])
    print(f"gateway: monolithic, tiny Mixtral with a 1,024-token context; KV budget {ready['kv_blocks']} blocks "
          f"of 16 tokens = {ready['kv_bytes'] / GiB:.3f} GiB (preallocated, so inside the idle figure)")
    print(f"flood: {args.requests} streaming requests x {args.max_tokens} tokens, {elapsed:.1f} s "
          f"{'(then waiting clients disconnect)' if args.duration else '(every request answered)'}")
    print(f"RSS idle {idle / GiB:.3f} GiB, peak {peak / GiB:.3f} GiB, delta {(peak - idle) / GiB:+.3f} GiB "
          f"(target <= +2 GiB), after {final / GiB:.3f} GiB")
    print(f"served {tally.served}, streaming at the end {tally.streaming}, queued at the end {tally.queued}, "
          f"refused (429) {tally.refused}, errors {len(tally.errors)}; {tally.tokens} tokens streamed, "
          f"{tally.tokens / elapsed:.0f} tok/s; preemptions {tally.preemptions:.0f}")
    print(f"gateway's view at the end of the flood: refused {tally.gateway_refused:.0f}, "
          f"largest queue depth sampled (once a second) {tally.max_queue_depth:.0f}")
    for e in tally.errors[:5]:
        print("  error:", e)
    print(f"normal request after the flood: {'served, tokens exact' if normal == expected else 'WRONG TOKENS'}")


if __name__ == "__main__":
    main()
