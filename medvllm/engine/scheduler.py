"""Scheduler: continuous batching over the block manager.

Each step is either a prefill or one decode token for every running request. A prefill takes up to
max_num_batched_tokens prompt tokens: first the next chunk of any prompt already split over steps,
then waiting requests, the last of them cut to what is left of the budget (chunked prefill: a prompt
longer than the budget runs over several steps, and the step's activations stay bounded by the
budget, not by the longest prompt). Requests join and leave the running batch at every step.

A waiting request is admitted only if the free blocks also cover what the running requests will still
write up to their max_tokens: a small KV pool then runs fewer requests at once instead of admitting
them all and recomputing the ones it must preempt (64 requests in a pool for ~30 computed 65% more
prompt tokens that way). Requests without max_tokens are counted one block ahead. When a decode
step still runs out of blocks, the newest running request is preempted: its blocks are freed and it
goes back to the front of the queue, to be recomputed later; nothing is lost. A split prompt that
finds no blocks for its next chunk is preempted the same way (its finished blocks stay in the prefix
cache, so the recompute resumes from them).
"""

from __future__ import annotations

from collections import deque

from medvllm.config import Config
from medvllm.engine.block_manager import BlockManager
from medvllm.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, config: Config, num_blocks: int, max_model_len: int):
        self.max_num_seqs = config.max_num_seqs
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = config.max_num_batched_tokens
        # an unpooled CPU cache maps pages in as blocks are first written (engine/kv_cache.py)
        lazy_pages = config.resolved_device.type == "cpu" and not config.enable_memory_pooling
        self.block_manager = BlockManager(
            num_blocks, config.kvcache_block_size, config.enable_prefix_caching, reuse_first=lazy_pages
        )
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0
        self.num_prefill_tokens_computed = 0  # prompt tokens actually run through the model

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        scheduled = self._schedule_prefill()
        if scheduled:
            return scheduled, True
        return self._schedule_decode(), False

    def _schedule_prefill(self) -> list[Sequence]:
        scheduled: list[Sequence] = []
        budget = self.max_num_batched_tokens
        bm = self.block_manager
        for seq in [s for s in self.running if s.is_prefilling]:
            if budget == 0:
                break
            upto = min(len(seq), seq.num_computed_tokens + budget)
            if not bm.can_grow(seq, upto):
                self.running.remove(seq)
                self._preempt(seq)
                continue
            bm.grow(seq, upto)
            budget -= self._schedule_chunk(seq, upto)
            scheduled.append(seq)
        reserved = sum(self._growth_blocks(s) for s in self.running)
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            seq = self.waiting[0]
            upto = min(len(seq), bm.num_cached_tokens(seq) + budget)
            own_growth = max(0, self._final_blocks(seq) - -(-upto // bm.block_size))
            if not bm.can_allocate(seq, upto, reserved + own_growth):
                break
            bm.allocate(seq, upto)
            budget -= self._schedule_chunk(seq, upto)
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
            reserved += self._growth_blocks(seq)
        return scheduled

    def _growth_blocks(self, seq: Sequence) -> int:
        """Blocks the sequence will still take beyond those it holds."""
        return max(0, self._final_blocks(seq) - len(seq.block_table))

    def _final_blocks(self, seq: Sequence) -> int:
        """Blocks the sequence holds at its max_tokens (without a limit: one block past its length)."""
        size = self.block_manager.block_size
        if seq.params.max_tokens is None:
            final = len(seq) + size
        else:
            final = seq.num_prompt_tokens + seq.params.max_tokens
        return -(-min(final, self.max_model_len) // size)

    def _schedule_chunk(self, seq: Sequence, upto: int) -> int:
        """This step computes the sequence's tokens up to `upto`; returns how many that is."""
        seq.prefill_end = upto
        new_tokens = upto - seq.num_computed_tokens
        self.num_prefill_tokens_computed += new_tokens
        return new_tokens

    def _schedule_decode(self) -> list[Sequence]:
        bm = self.block_manager
        scheduled: list[Sequence] = []
        waiting_for_blocks = [s for s in self.running if s.is_prefilling]
        queue = deque(s for s in self.running if not s.is_prefilling)
        while queue:
            seq = queue.popleft()
            while not bm.can_append(seq):
                if queue:
                    self._preempt(queue.pop())
                else:
                    self._preempt(seq)
                    break
            else:
                bm.append_slot(seq)
                scheduled.append(seq)
        self.running = waiting_for_blocks + scheduled
        return list(scheduled)  # a copy: finishing a sequence edits self.running

    def _preempt(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.WAITING
        self.block_manager.deallocate(seq)
        seq.metrics.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        self.block_manager.deallocate(seq)
        if seq in self.running:
            self.running.remove(seq)

    def abort(self, request_id: str) -> Sequence | None:
        for seq in list(self.waiting):
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.status = SequenceStatus.FINISHED
                return seq
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq)
                return seq
        return None
