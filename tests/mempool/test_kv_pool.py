"""KVPool behaviour, identical for the in-process and the Redis backend."""

from __future__ import annotations

import asyncio
import time

import pytest
import torch

from eaas.mempool import codec
from eaas.mempool.kv_pool import KVPool
from eaas.mempool.kv_store import CHUNK_BYTES

BS = 4


def make_block(seed: int, dtype=torch.bfloat16, layers: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(layers):
        out.append(torch.randn(2, BS, 8, generator=g).to(dtype))  # k: [kv_heads, block, head_dim]
        out.append(torch.randn(2, BS, 8, generator=g).to(dtype))  # v
    return out


def assert_blocks_equal(got, want):
    assert len(got) == len(want)
    for got_block, want_block in zip(got, want):
        assert len(got_block) == len(want_block)
        for a, b in zip(got_block, want_block):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a, b)


def test_blocks_round_trip_exactly_for_each_dtype_and_mixed_shapes(backend):
    mla_like = [torch.randn(1, BS, 576), torch.randn(3, BS, 128).bfloat16(), torch.randn(BS).half(),
                torch.empty(0, 5), torch.tensor([[float("nan"), -0.0, float("inf"), 1e-40]]).bfloat16()]
    blocks = [make_block(1, torch.float32), make_block(2, torch.bfloat16), make_block(3, torch.float16), mla_like]
    tokens = list(range(100, 100 + 4 * BS))

    async def run():
        pool = backend.kv_pool()
        assert await pool.insert(tokens, blocks) == 4
        n, got = await pool.match(tokens)
        await pool.close()
        return n, got

    n, got = asyncio.run(run())
    assert n == 4 * BS
    for got_block, want_block in zip(got, blocks):  # torch.equal is False for NaN: compare the bits
        for a, b in zip(got_block, want_block):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)) if a.numel() else True


def test_match_returns_the_longest_stored_prefix_of_full_blocks(backend):
    tokens = list(range(1, 3 * BS + 3))  # 3 full blocks and 2 trailing tokens
    blocks = [make_block(i) for i in range(3)]

    async def run():
        pool = backend.kv_pool()
        await pool.insert(tokens, blocks)
        results = {
            "same": await pool.match(tokens),
            "longer": await pool.match(tokens + [7, 7, 7, 7, 7]),
            "partial last block": await pool.match(tokens[:2 * BS + 3]),
            "diverges in block 1": await pool.match(tokens[:BS + 2] + [999] + tokens[BS + 3:]),
            "diverges in block 0": await pool.match([999] + tokens[1:]),
            "shorter than a block": await pool.match(tokens[:BS - 1]),
        }
        await pool.delete(tokens[:2 * BS])
        results["after deleting 2 blocks"] = await pool.match(tokens)
        await pool.close()
        return results

    results = asyncio.run(run())
    expected = {"same": 3, "longer": 3, "partial last block": 2, "diverges in block 1": 1,
                "diverges in block 0": 0, "shorter than a block": 0, "after deleting 2 blocks": 0}
    assert {name: len(blocks_) for name, (_, blocks_) in results.items()} == expected
    for n, got in results.values():
        assert n == len(got) * BS
        assert_blocks_equal(got, blocks[:len(got)])


def test_fewer_blocks_than_tokens_and_none_entries_store_only_given_blocks(backend):
    tokens = list(range(3 * BS))
    blocks = [make_block(i) for i in range(3)]

    async def run():
        pool = backend.kv_pool()
        assert await pool.insert(tokens, blocks[:1]) == 1
        assert len((await pool.match(tokens))[1]) == 1
        assert await pool.insert(tokens, [None, blocks[1], blocks[2]]) == 2  # block 0 came from match
        n, got = await pool.match(tokens)
        with pytest.raises(ValueError):
            await pool.insert(tokens[:BS], blocks[:2])  # 2 blocks for 1 block of tokens
        await pool.close()
        return n, got

    n, got = asyncio.run(run())
    assert n == 3 * BS
    assert_blocks_equal(got, blocks)


def test_other_fingerprint_or_block_size_never_shares_blocks(backend):
    tokens = list(range(2 * BS))
    readers_spec = [("model-b", BS), ("model-a", 2 * BS), ("model-a", BS)]

    async def run():
        writer = backend.kv_pool(fingerprint="model-a")
        await writer.insert(tokens, [make_block(0), make_block(1)])
        if backend.url is None:  # in-process, pools share blocks only through the same store
            readers = [KVPool(writer.store, fingerprint=f, block_size=bs) for f, bs in readers_spec]
        else:
            readers = [backend.kv_pool(fingerprint=f, block_size=bs) for f, bs in readers_spec]
        other_model, other_block_size, same = readers
        found = [(await p.match(tokens))[0] for p in (other_model, other_block_size, same)]
        await writer.close()
        return found

    assert asyncio.run(run()) == [0, 0, 2 * BS]


def test_corrupted_or_foreign_value_is_refused_counted_and_deleted(backend):
    tokens = list(range(3 * BS))
    blocks = [make_block(i) for i in range(3)]

    async def run():
        pool = backend.kv_pool()
        await pool.insert(tokens, blocks)
        k0, k1, k2 = pool.value_keys(tokens)
        damaged = bytearray(backend.get_value(pool, k1))
        damaged[-40] ^= 0x01  # one bit in block 1's payload
        backend.set_value(pool, k1, bytes(damaged))
        n_after_corruption, got = await pool.match(tokens)
        corrupt_key_after = backend.get_value(pool, k1)

        backend.set_value(pool, k2, backend.get_value(pool, k0))  # a valid frame of another block
        await pool.insert(tokens, [None, blocks[1]])
        n_after_foreign, _ = await pool.match(tokens)
        await pool.close()
        return n_after_corruption, got, corrupt_key_after, n_after_foreign

    n_corrupt, got, corrupt_key_after, n_foreign = asyncio.run(run())
    assert n_corrupt == BS
    assert_blocks_equal(got, blocks[:1])
    assert corrupt_key_after is None
    assert n_foreign == 2 * BS
    assert backend.metric("eaas_mempool_errors_total", kind="corrupt") == 1
    assert backend.metric("eaas_mempool_errors_total", kind="foreign") == 1
    assert backend.metric("eaas_mempool_hits_total") == 1 + 2
    assert backend.metric("eaas_mempool_misses_total") == 2 + 1


def test_budget_evicts_the_least_recently_used_chain_from_its_end(backend):
    frame_bytes = len(codec.encode_block(make_block(0), fingerprint="tiny-moe", chain_hash="0" * 64, block_size=BS))
    chains = {name: [base + i for i in range(2 * BS)] for name, base in (("a", 1000), ("b", 2000), ("c", 3000))}

    async def run():
        pool = backend.kv_pool(budget_bytes=5 * frame_bytes)  # room for 2 chains of 2 blocks, not 3
        await pool.insert(chains["a"], [make_block(1), make_block(2)])
        await pool.insert(chains["b"], [make_block(3), make_block(4)])
        assert (await pool.match(chains["a"]))[0] == 2 * BS  # a is now more recent than b
        await pool.insert(chains["c"], [make_block(5), make_block(6)])
        found = {name: (await pool.match(tokens))[0] // BS for name, tokens in chains.items()}
        await pool.close()
        return found

    # 6 blocks > 5: one block goes, the end of the least recently used chain b; its head survives.
    assert asyncio.run(run()) == {"a": 2, "b": 1, "c": 2}
    if backend.server is not None:
        raw = backend.raw()
        keys = [k.decode() for k in raw.scan_iter(f"eaas:{backend.deployment}:kv:*")]
        assert len(keys) == 5
        assert int(raw.get(f"eaas:{backend.deployment}:kvbytes")) == 5 * frame_bytes
        assert raw.zcard(f"eaas:{backend.deployment}:kvlru") == raw.hlen(f"eaas:{backend.deployment}:kvsize") == 5


def test_blocks_expire_after_ttl_and_a_hit_renews_it(backend):
    tokens = list(range(2 * BS))

    async def run():
        pool = backend.kv_pool(ttl_s=2.0)
        await pool.insert(tokens, [make_block(0), make_block(1)])
        seen = []
        for _ in range(3):  # 3 x 0.8 s > ttl, but each hit renews it (1.2 s of slack for a loaded machine)
            await asyncio.sleep(0.8)
            seen.append((await pool.match(tokens))[0])
        await asyncio.sleep(2.6)
        seen.append((await pool.match(tokens))[0])
        await pool.close()
        return seen

    assert asyncio.run(run()) == [2 * BS, 2 * BS, 2 * BS, 0]


def test_large_block_is_chunked_across_keys_and_round_trips(backend):
    big = [torch.randn(8, BS, 40000), torch.randn(2, BS, 3000).bfloat16()]  # ~5.2 MB fp32 + 48 KB bf16
    small = make_block(7)
    tokens = list(range(2 * BS))

    async def run():
        pool = backend.kv_pool()
        await pool.insert(tokens, [big, small])
        n, got = await pool.match(tokens)
        base = pool.value_keys(tokens)[0]
        await pool.close()
        return n, got, base

    n, got, base = asyncio.run(run())
    assert n == 2 * BS
    assert_blocks_equal(got, [big, small])
    if backend.server is not None:
        raw = backend.raw()
        frame_len = codec.frame_length(raw.get(base))
        assert frame_len > CHUNK_BYTES
        assert [raw.strlen(f"{base}:{c}") for c in (1, 2)] == [frame_len - CHUNK_BYTES, 0]
        assert raw.strlen(base) == CHUNK_BYTES


def test_layout_mismatch_is_rejected_on_insert(backend):
    layout = codec.layout_of(make_block(0))

    async def run():
        pool = backend.kv_pool(layout=layout)
        with pytest.raises(ValueError, match="layout"):
            await pool.insert(list(range(BS)), [make_block(0, torch.float16)])
        assert await pool.insert(list(range(BS)), [make_block(0)]) == 1
        await pool.close()

    asyncio.run(run())


def test_metrics_count_blocks_bytes_and_op_latency(backend):
    tokens = list(range(3 * BS))
    blocks = [make_block(i) for i in range(2)]

    async def run():
        pool = backend.kv_pool()
        await pool.insert(tokens, blocks)
        await pool.match(tokens)
        await pool.close()

    start = time.perf_counter()
    asyncio.run(run())
    frame_bytes = sum(len(codec.encode_block(b, fingerprint="tiny-moe", chain_hash="0" * 64, block_size=BS))
                      for b in blocks)
    assert backend.metric("eaas_mempool_hits_total") == 2
    assert backend.metric("eaas_mempool_misses_total") == 1  # the third full block of tokens
    assert backend.metric("eaas_mempool_bytes_written_total") == frame_bytes
    assert backend.metric("eaas_mempool_bytes_read_total") == frame_bytes
    for op in ("insert", "match"):
        assert backend.metric("eaas_mempool_op_seconds_count", op=op) == 1
        assert 0 < backend.metric("eaas_mempool_op_seconds_sum", op=op) < time.perf_counter() - start
