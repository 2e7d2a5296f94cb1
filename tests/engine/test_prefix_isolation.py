"""The prefix cache never hands a request KV computed under another prefix, even when hashes collide.

Block hashes are keyed and chained over the whole prefix; on top of that a lookup checks that a cached
block was computed right after the very block the request already matched (or at the start, under the
same cache salt). The tests swap in weak hashes to force collisions and check that every reused block
was computed under exactly the request's prefix.
"""

from __future__ import annotations

import random

import pytest

from medvllm.engine import block_manager as bm_module
from medvllm.engine.block_manager import BlockManager
from medvllm.engine.sequence import Sequence
from medvllm.sampling_params import SamplingParams

BS = 4


def seq(tokens, rid, salt=None):
    return Sequence(rid, None, list(tokens), SamplingParams(), BS, cache_salt=salt)


def parent_blind(*args):
    """A hash of the block's own tokens only: blocks with equal tokens collide whatever precedes them."""
    return hash(tuple(args[-1]))


def four_bits(*args):
    return hash(tuple(args[-1])) & 0xF


def constant(*args):
    return 7


def test_a_collision_after_a_shared_first_block_does_not_reuse_the_other_prefix(monkeypatch):
    monkeypatch.setattr(bm_module, "chain_hash", parent_blind)
    bm = BlockManager(32, BS)
    P, Q, Y = [1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]
    c = seq(Q + [0], "c")  # caches Q at the start
    bm.allocate(c)
    bm.deallocate(c)
    a = seq(P + Y + [0], "a")  # caches Y after P
    bm.allocate(a)
    b = seq(Q + Y + [0], "b")  # Y after Q: its KV differs from a's Y block
    bm.allocate(b)
    assert b.block_table[1] != a.block_table[1]
    assert b.num_computed_tokens == BS  # only Q is reused


class Truth:
    """What each block's KV was computed under: (salt, every token up to the block's end)."""

    def __init__(self):
        self.under: dict[int, tuple] = {}

    def admitted(self, s: Sequence) -> None:
        for i, block_id in enumerate(s.block_table):
            prefix = (s.cache_salt, tuple(s.token_ids[: (i + 1) * BS]))
            if i < s.num_computed_tokens // BS:
                assert self.under[block_id] == prefix, f"{s.request_id} reused block {i} of another prefix"
            else:
                self.under[block_id] = prefix

    def decoded(self, s: Sequence) -> None:
        i = (len(s) - 1) // BS
        self.under[s.block_table[i]] = (s.cache_salt, tuple(s.token_ids[: (i + 1) * BS]))


@pytest.mark.parametrize("weak", [None, parent_blind, four_bits, constant], ids=["default", "blind", "4bit", "const"])
@pytest.mark.parametrize("reuse_first", [False, True])
def test_random_workload_reuses_only_blocks_computed_under_the_same_prefix(monkeypatch, weak, reuse_first):
    if weak is not None:
        monkeypatch.setattr(bm_module, "chain_hash", weak)
    rng = random.Random(1)
    bm = BlockManager(48, BS, reuse_first=reuse_first)
    truth = Truth()
    live: list[Sequence] = []
    hits = 0
    for step in range(600):
        r = rng.random()
        if live and r < 0.3:
            bm.deallocate(live.pop(rng.randrange(len(live))))
        elif live and r < 0.6:
            s = rng.choice(live)
            s.append_token(rng.randrange(2))
            if bm.can_append(s):
                bm.append_slot(s)
                truth.decoded(s)
            else:
                live.remove(s)
                bm.deallocate(s)
        else:
            # two-token alphabet, few salts: prefixes and single blocks repeat often
            tokens = [rng.randrange(2) for _ in range(rng.randint(1, 14))]
            s = seq(tokens, str(step), salt=rng.choice([None, None, "tenant-b"]))
            if bm.can_allocate(s):
                bm.allocate(s)
                truth.admitted(s)
                hits += s.num_computed_tokens
                live.append(s)
    assert hits > 0  # the cache was exercised
    for s in live:
        bm.deallocate(s)
    assert bm.num_free_blocks == 48


def test_a_cache_salt_keeps_identical_prompts_apart():
    bm = BlockManager(16, BS)
    tokens = list(range(9))
    a = seq(tokens, "a", salt="tenant-a")
    bm.allocate(a)
    b = seq(tokens, "b", salt="tenant-b")
    bm.allocate(b)
    assert b.num_computed_tokens == 0
    a2 = seq(tokens, "a2", salt="tenant-a")
    bm.allocate(a2)
    assert a2.num_computed_tokens == 8 and a2.block_table[:2] == a.block_table[:2]


def test_block_hashes_are_computed_once_per_full_block(monkeypatch):
    calls = []
    real = bm_module.chain_hash

    def counting(*args):
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(bm_module, "chain_hash", counting)
    bm = BlockManager(16, BS)
    s = seq(range(10), "s")  # two full blocks
    assert bm.can_allocate(s)
    bm.num_cached_tokens(s)
    bm.allocate(s)
    for t in (10, 11):
        s.append_token(t)
        bm.append_slot(s)  # the third block fills at 12 tokens
    assert len(calls) == 3
