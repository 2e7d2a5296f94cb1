"""BlockManager: hands out KV-cache blocks, with prefix caching.

A full block is named by a hash chained over every token before it, so two requests that share a
prefix (a system prompt, a discharge-note template) share its blocks, computed once. Freed blocks keep
their contents and hash until reused, oldest-freed first, so a prefix can outlive its requests.

Reusing a block hands one request KV computed for another, so a hit must mean the same prefix: the hash
is BLAKE2b keyed with a secret drawn per engine (nobody can craft a collision offline), chained from a
root that holds whatever besides the tokens changes the KV (`Sequence.kv_key`: a cache salt; adapters
or images later). And a lookup does not trust the hash alone: each cached block records the block it
was computed after (`parent`, never reused for other content), so a hit must have the request's tokens
and follow the very block the request matched before it (or, first, the same root).

A freed block holding nothing reusable (a partial tail, a scratch block) is always taken first: it
costs no cached prefix. Then, where the pool's memory is committed up front (a CUDA tensor, a pooled
CPU cache), blocks never used yet come before freed cached ones, so cached prefixes live as long as
possible. Where pages are only mapped in when first written (an unpooled CPU cache), freed cached blocks
are reused first (`reuse_first`): the resident KV then stays at the peak the requests needed, not the
limit. Scratch blocks (scoring) never evict a prefix while an untouched block is left.
"""

from __future__ import annotations

import hashlib
import itertools
import secrets
from array import array
from collections import OrderedDict
from typing import TYPE_CHECKING

from medvllm.engine.sequence import Sequence

if TYPE_CHECKING:
    from medvllm.engine.window_blocks import WindowBlocks


class Block:
    __slots__ = ("block_id", "ref_count", "hash", "token_ids", "uid", "parent")

    def __init__(self, block_id: int):
        self.block_id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None
        self.token_ids: tuple[int, ...] = ()
        self.uid = 0  # names this content while cached; never given to other content (0: not named)
        self.parent: int | bytes | None = None  # uid of the block before it, or its request's kv_key if first

    def forget(self) -> None:
        self.hash, self.token_ids, self.uid, self.parent = None, (), 0, None


def chain_hash(key: bytes, prev: bytes, token_ids: list[int]) -> bytes:
    """A block's name: keyed BLAKE2b over the previous block's name (fixed length) and this block's tokens."""
    h = hashlib.blake2b(prev, key=key, digest_size=32)
    h.update(array("q", token_ids).tobytes())
    return h.digest()


def root_hash(key: bytes, kv_key: bytes) -> bytes:
    """What a request's first block is chained from: its KV-changing settings, apart from the tokens."""
    return hashlib.blake2b(b"root:" + kv_key, key=key, digest_size=32).digest()


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool = True,
        reuse_first: bool = False,
        window: WindowBlocks | None = None,
    ):
        """`window`: the sliding-window layers' own pool (engine/window_blocks.py), in a model that has
        both kinds of layer; this pool then holds the full-attention layers' KV."""
        self.block_size = block_size
        self.window = window
        self.enable_prefix_caching = enable_prefix_caching
        self.reuse_first = reuse_first
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free: OrderedDict[int, None] = OrderedDict()  # freed blocks holding a prefix, oldest first
        self.free_blank: OrderedDict[int, None] = OrderedDict()  # freed blocks holding nothing reusable
        self.num_used_ever = 0  # blocks [0, num_used_ever) have been handed out at least once
        self.cached: dict[bytes, int] = {}  # chain hash -> block id
        self.key = secrets.token_bytes(32)  # per engine: block names cannot be predicted or collided offline
        self._uids = itertools.count(1)
        self.num_cached_tokens_total = 0  # prompt tokens served from the cache, since start
        self.num_queried_tokens_total = 0

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_free_blocks(self) -> int:
        return len(self.free) + len(self.free_blank) + len(self.blocks) - self.num_used_ever

    @property
    def usage(self) -> float:
        """Fraction of blocks held by live requests."""
        return 1.0 - self.num_free_blocks / len(self.blocks)

    def _hashes(self, seq: Sequence, n: int) -> list[bytes]:
        """The chain hashes of the sequence's first n full blocks, each computed once per sequence."""
        hashes = seq.block_hashes
        if len(hashes) < n:
            prev = hashes[-1] if hashes else root_hash(self.key, seq.kv_key())
            for i in range(len(hashes), n):
                prev = chain_hash(self.key, prev, seq.block_tokens(i))
                hashes.append(prev)
        return hashes

    def _lookup(self, seq: Sequence) -> tuple[list[Block], list[Block]]:
        """Blocks already holding this sequence's leading full blocks (never its last token), and the
        sliding-window layers' blocks that the next query sees (cutting the hit to what both hold)."""
        if not self.enable_prefix_caching:
            return [], []
        # the last token is always recomputed: its logits are needed to sample
        n = (len(seq) - 1) // self.block_size
        hashes = self._hashes(seq, n)
        hits: list[Block] = []
        parent: int | bytes = seq.kv_key()
        for i in range(n):
            block_id = self.cached.get(hashes[i])
            if block_id is None:
                break
            block = self.blocks[block_id]
            # proof beyond the hash: the same tokens, computed right after the block matched before
            if block.parent != parent or block.token_ids != tuple(seq.block_tokens(i)):
                break
            hits.append(block)
            parent = block.uid
        if self.window is None:
            return hits, []
        usable, found = self.window.lookup(seq, hits)
        return hits[:usable], found

    def num_cached_tokens(self, seq: Sequence) -> int:
        """Leading tokens of the sequence whose KV the cache already holds."""
        return len(self._lookup(seq)[0]) * self.block_size

    def can_allocate(self, seq: Sequence, upto: int | None = None, reserved: int = 0) -> bool:
        """Room for the sequence's first `upto` tokens (all of them by default), cached ones included,
        with `reserved` free blocks left over."""
        hits, found = self._lookup(seq)
        upto = upto or len(seq)
        revived = sum(1 for b in hits if b.ref_count == 0)
        if self._blocks_for(upto) - len(hits) + revived + reserved > self.num_free_blocks:
            return False
        if self.window is None:
            return True
        revived = sum(1 for b in found if b.ref_count == 0)
        start = len(hits) * self.block_size
        return self.window.needed(start, upto, len(found)) + revived <= self.window.num_free_blocks

    def can_grow(self, seq: Sequence, upto: int) -> bool:
        if self._blocks_for(upto) - len(seq.block_table) > self.num_free_blocks:
            return False
        return self.window is None or self.window.can_grow(seq, seq.num_computed_tokens, upto)

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _take_free_block(self, keep_prefixes: bool = False) -> Block:
        if self.free_blank:
            block_id, _ = self.free_blank.popitem(last=False)
        elif self.num_used_ever < len(self.blocks) and not (self.reuse_first and self.free and not keep_prefixes):
            block_id = self.num_used_ever
            self.num_used_ever += 1
        else:
            block_id, _ = self.free.popitem(last=False)
        block = self.blocks[block_id]
        if block.hash is not None and self.cached.get(block.hash) == block_id:
            del self.cached[block.hash]
        block.forget()
        block.ref_count = 1
        return block

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prefix, so the next requests compute their prompts whole (a benchmark's
        repeats, or a deliberate cold start). False, with nothing changed, while a request holds blocks."""
        if self.usage > 0 or (self.window is not None and self.window.num_held_blocks > 0):
            return False
        self.forget_cached()
        if self.window is not None:
            self.window.pool.forget_cached()
        return True

    def forget_cached(self) -> None:
        for block_id in self.free:
            self.blocks[block_id].forget()
        self.free_blank.update(self.free)  # the pages stay mapped: taken again before untouched blocks
        self.free.clear()
        self.cached.clear()

    def _release(self, block: Block) -> None:
        """A block no request holds: kept for its prefix if it is the cached copy, else blank."""
        if block.hash is not None and self.cached.get(block.hash) == block.block_id:
            self.free[block.block_id] = None
        else:
            block.forget()
            self.free_blank[block.block_id] = None

    def _register_own(self, seq: Sequence, i: int) -> None:
        """Name the sequence's block i for reuse, once the block before it is named (its KV follows that one)."""
        block = self.blocks[seq.block_table[i]]
        if block.hash is not None:
            return
        parent = self.blocks[seq.block_table[i - 1]].uid if i else seq.kv_key()
        if i and not parent:
            return
        block.hash = self._hashes(seq, i + 1)[i]
        block.token_ids = tuple(seq.block_tokens(i))
        block.uid = next(self._uids)
        block.parent = parent
        self.cached.setdefault(block.hash, block.block_id)

    def allocate(self, seq: Sequence, upto: int | None = None) -> None:
        """Admit a sequence: its cached leading blocks, then new blocks up to token `upto` (default: all)."""
        assert not seq.block_table
        hits, found = self._lookup(seq)
        if self.window is not None:
            self.window.attach(seq, len(hits), found)
        for block in hits:
            if block.ref_count == 0:
                del self.free[block.block_id]
            block.ref_count += 1
            seq.block_table.append(block.block_id)
        seq.num_computed_tokens = len(hits) * self.block_size
        seq.metrics.num_cached_tokens = max(seq.metrics.num_cached_tokens, seq.num_computed_tokens)
        self.num_cached_tokens_total += seq.num_computed_tokens
        self.num_queried_tokens_total += len(seq)
        self.grow(seq, upto or len(seq))

    def grow(self, seq: Sequence, upto: int) -> None:
        """Blocks for the sequence's tokens up to `upto`. The full blocks among them that the step about
        to run computes are named for reuse now: a block is never found by a later request before the
        step that fills it has been scheduled."""
        while len(seq.block_table) < self._blocks_for(upto):
            seq.block_table.append(self._take_free_block().block_id)
        if self.window is not None:
            self.window.grow(seq, seq.num_computed_tokens, upto)
        if not self.enable_prefix_caching:
            return
        for i in range(seq.num_computed_tokens // self.block_size, upto // self.block_size):
            self._register(seq, i)

    def _register(self, seq: Sequence, i: int) -> None:
        """Name the sequence's block i (and its sliding-window twin) for reuse."""
        self._register_own(seq, i)
        if self.window is not None:
            self.window.register(seq, i, self.blocks[seq.block_table[i]])

    def forget_uncomputed(self, seq: Sequence) -> None:
        """Drop from the prefix cache the sequence's blocks past its computed tokens: a step that failed
        named them for reuse when it was scheduled, and never wrote their KV."""
        for block_id in seq.block_table[seq.num_computed_tokens // self.block_size :]:
            block = self.blocks[block_id]
            if block.hash is not None and self.cached.get(block.hash) == block_id:
                del self.cached[block.hash]
            block.forget()
        if self.window is not None:
            self.window.forget_from(seq, seq.num_computed_tokens // self.block_size)

    def take_scratch_blocks(self, n: int) -> list[int]:
        """n free blocks outside any sequence and the prefix cache (e.g. for scoring); give them back
        with release_scratch_blocks."""
        return [self._take_free_block(keep_prefixes=True).block_id for _ in range(n)]

    def release_scratch_blocks(self, block_ids: list[int]) -> None:
        for block_id in block_ids:
            self.blocks[block_id].ref_count = 0
            self._release(self.blocks[block_id])

    def deallocate(self, seq: Sequence) -> None:
        # tail first, so the free list evicts the ends of prefixes before their heads
        for block_id in reversed(seq.block_table):
            block = self.blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                self._release(block)
        seq.block_table = []
        seq.num_computed_tokens = 0
        if self.window is not None:
            self.window.release(seq)

    def can_append(self, seq: Sequence) -> bool:
        """Room for the KV of the sequence's newest token."""
        if len(seq.block_table) < seq.num_blocks and self.num_free_blocks < 1:
            return False
        return self.window is None or self.window.can_grow(seq, len(seq) - 1, len(seq))

    def append_slot(self, seq: Sequence) -> None:
        """Give the newest token a slot; register a block once it fills, for later reuse."""
        if len(seq.block_table) < seq.num_blocks:
            seq.block_table.append(self._take_free_block().block_id)
        if self.window is not None:
            self.window.grow(seq, len(seq) - 1, len(seq))
        if len(seq) % self.block_size == 0 and self.enable_prefix_caching:
            self._register(seq, len(seq) // self.block_size - 1)
