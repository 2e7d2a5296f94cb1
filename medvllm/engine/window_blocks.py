"""KV blocks of the sliding-window layers, held only while a query can still see them.

In a model that interleaves sliding-window (local) and full-attention (global) layers (Gemma 2 and 3),
a local layer's query at position p reads keys p - window + 1 .. p only. The local layers get a pool of
their own: a sequence's `window_table` runs parallel to its `block_table` (entry i holds tokens
i * block_size ..), and a block is given back as soon as no query of the sequence can see it any more.
Its entry then points at the null block (block 0, zero-filled, never handed out), which the attention
kernels never read: they start at the window. A long context then holds its global layers' KV whole
and each local layer's window, as vLLM's hybrid KV cache manager does.

Prefix caching: a full local block is named like the global block at the same place and records that
block's uid; a prefix hit of k blocks is usable only if the local blocks the next query sees (the window
before token k * block_size) are still cached and were computed after the very global blocks matched, so
a hit is cut back to the longest prefix both pools hold.
"""

from __future__ import annotations

from medvllm.engine.block_manager import Block, BlockManager
from medvllm.engine.sequence import Sequence

NULL_BLOCK = 0


class WindowBlocks:
    def __init__(self, num_blocks: int, window: int, block_size: int, reuse_first: bool = False):
        self.pool = BlockManager(num_blocks, block_size, reuse_first=reuse_first)
        self.pool.num_used_ever = 1  # block 0 is the null block: never handed out, stays zero
        self.block_size = block_size
        self.window = window

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks - 1

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def num_held_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    def first_block(self, position: int) -> int:
        """The lowest block a query at `position` (or later) still reads."""
        return max(0, position - self.window + 1) // self.block_size

    def lookup(self, seq: Sequence, hits: list[Block]) -> tuple[int, list[Block]]:
        """How many of the global pool's `hits` are usable, and the local blocks the next query sees.

        Scans from the longest hit down: a missing local block i rules out every hit whose window covers
        it, so the next candidate is i blocks."""
        k = len(hits)
        while k > 0:
            lo = self.first_block(k * self.block_size)
            found = [self._cached(seq, i, hits[i]) for i in range(lo, k)]
            missing = [i for i, block in zip(range(lo, k), found) if block is None]
            if not missing:
                return k, found
            k = missing[-1]
        return 0, []

    def _cached(self, seq: Sequence, i: int, global_block: Block) -> Block | None:
        block_id = self.pool.cached.get(seq.block_hashes[i])
        if block_id is None:
            return None
        block = self.pool.blocks[block_id]
        if block.parent != global_block.uid or block.token_ids != global_block.token_ids:
            return None
        return block

    def needed(self, start: int, upto: int, held: int = 0) -> int:
        """New blocks to compute tokens start..upto, besides `held` ones already in place."""
        return max(0, -(-upto // self.block_size) - self.first_block(start) - held)

    def can_grow(self, seq: Sequence, start: int, upto: int) -> bool:
        """Room for tokens start..upto, counting the blocks that fall out of the window first."""
        first, table = self.first_block(start), seq.window_table
        freed = sum(1 for b in table[:first] if b != NULL_BLOCK and self.pool.blocks[b].ref_count == 1)
        new = max(0, -(-upto // self.block_size) - max(len(table), first))
        return new <= self.num_free_blocks + freed

    def attach(self, seq: Sequence, k: int, found: list[Block]) -> None:
        """A newly admitted sequence takes its cached window (`found`, ending at block k)."""
        seq.window_table = [NULL_BLOCK] * (k - len(found))
        for block in found:
            if block.ref_count == 0:
                del self.pool.free[block.block_id]
            block.ref_count += 1
            seq.window_table.append(block.block_id)

    def grow(self, seq: Sequence, start: int, upto: int) -> None:
        """Before a step computes tokens start..upto: give back what no query sees any more, then take
        blocks up to `upto`."""
        self.drop_before(seq, self.first_block(start))
        table = seq.window_table
        while len(table) < -(-upto // self.block_size):
            index = len(table)
            table.append(NULL_BLOCK if index < self.first_block(start) else self.pool._take_free_block().block_id)

    def drop_before(self, seq: Sequence, first: int) -> None:
        table = seq.window_table
        for i in range(min(first, len(table))):
            if table[i] != NULL_BLOCK:
                self._give_back(table[i])
                table[i] = NULL_BLOCK

    def register(self, seq: Sequence, i: int, global_block: Block) -> None:
        """Name local block i like global block i, once that one is named."""
        if i >= len(seq.window_table) or seq.window_table[i] == NULL_BLOCK or not global_block.uid:
            return
        block = self.pool.blocks[seq.window_table[i]]
        if block.hash is not None:
            return
        block.hash, block.token_ids = global_block.hash, global_block.token_ids
        block.uid = next(self.pool._uids)
        block.parent = global_block.uid
        # a cached twin computed after other global blocks (evicted since) can never be a hit: replace it
        current = self.pool.cached.get(block.hash)
        if current is None or self.pool.blocks[current].parent != block.parent:
            self.pool.cached[block.hash] = block.block_id

    def forget_from(self, seq: Sequence, first: int) -> None:
        """Unname blocks from `first` on (a failed step named them and never wrote their KV)."""
        for block_id in seq.window_table[first:]:
            if block_id == NULL_BLOCK:
                continue
            block = self.pool.blocks[block_id]
            if block.hash is not None and self.pool.cached.get(block.hash) == block_id:
                del self.pool.cached[block.hash]
            block.forget()

    def release(self, seq: Sequence) -> None:
        for block_id in reversed(seq.window_table):
            if block_id != NULL_BLOCK:
                self._give_back(block_id)
        seq.window_table = []

    def _give_back(self, block_id: int) -> None:
        block = self.pool.blocks[block_id]
        block.ref_count -= 1
        if block.ref_count == 0:
            self.pool._release(block)

    def take_scratch(self, n: int) -> list[int]:
        return self.pool.take_scratch_blocks(n)

    def release_scratch(self, block_ids: list[int]) -> None:
        self.pool.release_scratch_blocks(block_ids)
