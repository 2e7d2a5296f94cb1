"""BlockManager bookkeeping: prefix sharing, reference counts, eviction order, no leaks."""

from __future__ import annotations

import random

from medvllm.engine.block_manager import BlockManager
from medvllm.engine.sequence import Sequence
from medvllm.sampling_params import SamplingParams

BS = 4


def seq(tokens, rid="r"):
    return Sequence(rid, None, list(tokens), SamplingParams(), BS)


def test_shared_prefix_reuses_full_blocks_only():
    bm = BlockManager(16, BS)
    a = seq(range(10), "a")  # blocks: [0-3] [4-7] [8,9]
    bm.allocate(a)
    b = seq(list(range(8)) + [50, 51, 52], "b")
    bm.allocate(b)
    assert b.block_table[:2] == a.block_table[:2] and b.block_table[2] != a.block_table[2]
    assert b.num_computed_tokens == 8 and b.metrics.num_cached_tokens == 8
    assert [bm.blocks[i].ref_count for i in a.block_table] == [2, 2, 1]


def test_last_token_is_always_recomputed():
    bm = BlockManager(16, BS)
    a = seq(range(8), "a")
    bm.allocate(a)
    b = seq(range(8), "b")  # identical, two full blocks: only the first may be reused
    bm.allocate(b)
    assert b.num_computed_tokens == 4


def test_freed_prefix_survives_until_its_blocks_are_reused():
    bm = BlockManager(4, BS)
    a = seq(range(9), "a")
    bm.allocate(a)
    bm.deallocate(a)
    assert bm.num_free_blocks == 4
    b = seq(range(9), "b")
    assert bm.can_allocate(b)
    bm.allocate(b)
    assert b.num_computed_tokens == 8
    bm.deallocate(b)
    # a different request takes every block: the old prefix is gone
    c = seq(range(100, 116), "c")
    bm.allocate(c)
    bm.deallocate(c)
    d = seq(range(9), "d")
    bm.allocate(d)
    assert d.num_computed_tokens == 0


def test_reset_prefix_cache_forgets_prefixes_only_when_no_request_holds_blocks():
    bm = BlockManager(8, BS)
    a = seq(range(9), "a")
    bm.allocate(a)
    used = set(a.block_table)
    assert not bm.reset_prefix_cache()  # a is running: nothing changes
    bm.deallocate(a)
    assert bm.reset_prefix_cache() and bm.num_free_blocks == 8
    b = seq(range(9), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 0  # computed whole, on the blocks a used (their pages are mapped)
    assert set(b.block_table) == used


def test_decode_blocks_register_when_full_and_can_be_shared():
    bm = BlockManager(8, BS)
    a = seq(range(3), "a")
    bm.allocate(a)
    for t in (3, 4, 5, 6, 7, 8):
        a.append_token(t)
        assert bm.can_append(a)
        bm.append_slot(a)
    assert len(a.block_table) == 3
    b = seq(range(9), "b")
    bm.allocate(b)
    assert b.num_computed_tokens == 8


def test_random_workload_never_leaks_blocks():
    rng = random.Random(0)
    bm = BlockManager(40, BS)
    live = []
    for step in range(400):
        if live and rng.random() < 0.4:
            bm.deallocate(live.pop(rng.randrange(len(live))))
        else:
            s = seq([rng.randrange(3) for _ in range(rng.randint(1, 20))], str(step))
            if bm.can_allocate(s):
                bm.allocate(s)
                live.append(s)
        held = {}
        for s in live:
            for b in s.block_table:
                held[b] = held.get(b, 0) + 1
        assert all(bm.blocks[b].ref_count == n for b, n in held.items())
        assert bm.num_free_blocks == 40 - len(held)
    for s in live:
        bm.deallocate(s)
    assert bm.num_free_blocks == 40 and bm.usage == 0.0


def test_fresh_blocks_first_by_default_freed_blocks_first_with_reuse_first():
    for reuse_first, expected in ((False, [2, 3]), (True, [1, 0])):
        bm = BlockManager(8, BS, reuse_first=reuse_first)
        a = seq(range(8), "a")  # blocks 0 and 1
        bm.allocate(a)
        bm.deallocate(a)  # tail first: 1 is the oldest freed
        b = seq(range(100, 108), "b")
        bm.allocate(b)
        assert b.block_table == expected
        assert bm.num_used_ever == (2 if reuse_first else 4)
        assert bm.num_free_blocks == 6


def test_blank_freed_blocks_go_first_and_scratch_never_evicts_a_prefix_while_room_is_left():
    bm = BlockManager(8, BS, reuse_first=True)
    a = seq(range(10), "a")  # blocks 0, 1 full (cached), 2 a partial tail
    bm.allocate(a)
    bm.deallocate(a)
    b = seq(range(100, 102), "b")
    bm.allocate(b)
    assert b.block_table == [2]  # the blank tail, not a cached prefix
    scratch = bm.take_scratch_blocks(3)
    assert scratch == [3, 4, 5]  # untouched blocks, so a's prefix survives scoring
    bm.release_scratch_blocks(scratch)
    again = seq(range(9), "again")
    bm.allocate(again)
    assert again.num_computed_tokens == 8 and again.block_table[:2] == [0, 1]
