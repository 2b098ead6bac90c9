"""The block manager's bookkeeping, as a pure unit: tables, ref counts, prefix names, the free order."""

from __future__ import annotations

import pytest

from eaas.engine.block_manager import BlockManager, blocks_for, chain_hashes


def test_blocks_for_rounds_up():
    assert [blocks_for(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]


def test_chain_hashes_name_a_block_by_its_whole_prefix():
    a = chain_hashes([1, 2, 3, 4, 5, 6, 7, 8, 9], 4)
    assert len(a) == 2  # full blocks only
    assert chain_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4) == a
    b = chain_hashes([0, 2, 3, 4, 5, 6, 7, 8], 4)
    assert b[0] != a[0] and b[1] != a[1]  # same second block, other prefix: another name
    assert chain_hashes([5, 6, 7, 8], 4, start=a[0]) == a[1:]  # a chain continues from a name


def test_grow_takes_free_blocks_and_release_gives_them_back():
    bm = BlockManager(4, 2)
    t: list[int] = []
    bm.grow(t, 3)
    assert t == [0, 1] and bm.num_free == 2 and bm.num_used == 2
    bm.grow(t, 4)  # still fits in two blocks
    assert len(t) == 2
    bm.grow(t, 5)
    assert t == [0, 1, 2]
    with pytest.raises(RuntimeError, match="KV budget exhausted"):
        bm.grow(t, 9)
    bm.release(t)
    assert t == [] and bm.num_free == 4


def test_named_blocks_are_shared_with_ref_counts_and_survive_release_until_reused():
    bm = BlockManager(4, 2)
    names = chain_hashes([1, 2, 3, 4, 5], 2)
    a: list[int] = []
    bm.grow(a, 5)
    bm.name(a[0], names[0])
    bm.name(a[1], names[1])
    assert bm.cached_prefix(names) == a[:2] and bm.shared_hits(names) == 2
    b = bm.take_cached(names)
    assert b == a[:2] and bm.refs[a[0]] == 2 and bm.exclusive(a) == 1  # only the third block is a's alone
    bm.release(a)
    assert bm.num_free == 2 and bm.cached_prefix(names) == b  # b still holds the prefix
    bm.release(b)
    assert bm.num_free == 4 and bm.shared_hits(names) == 0 and bm.cached_prefix(names) == [0, 1]
    c = bm.take_cached(names)  # a freed prefix is found again, and taking it takes it off the free list
    assert c == [0, 1] and bm.num_free == 2
    bm.release(c)
    d: list[int] = []
    bm.grow(d, 8)  # every block handed out anew: the old names are forgotten
    assert bm.cached_prefix(names) == []


def test_freed_blocks_are_reused_tail_first_so_prefix_heads_stay_cached():
    bm = BlockManager(3, 1)
    t: list[int] = []
    bm.grow(t, 2)
    head = t[0]
    bm.release(t)
    fresh: list[int] = []
    bm.grow(fresh, 2)  # the never-used block, then the freed tail
    assert head not in fresh
