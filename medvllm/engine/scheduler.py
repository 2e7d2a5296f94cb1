"""Scheduler: continuous batching over the block manager.

Each step is either a prefill of waiting requests (as many as fit the token and sequence budgets and
the free blocks) or one decode token for every running request. Requests join and leave the running
batch at every step. When a decode step runs out of blocks, the newest running request is preempted:
its blocks are freed and it goes back to the front of the queue, to be recomputed later; nothing is lost.
"""
from __future__ import annotations

from collections import deque

from medvllm.config import Config
from medvllm.engine.block_manager import BlockManager
from medvllm.engine.sequence import Sequence, SequenceStatus


class Scheduler:
    def __init__(self, config: Config, num_blocks: int):
        self.max_num_seqs = config.max_num_seqs
        self.max_num_batched_tokens = config.max_num_batched_tokens
        # an unpooled CPU cache maps pages in as blocks are first written (engine/kv_cache.py)
        lazy_pages = config.resolved_device.type == "cpu" and not config.enable_memory_pooling
        self.block_manager = BlockManager(num_blocks, config.kvcache_block_size, config.enable_prefix_caching,
                                          reuse_first=lazy_pages)
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
        while self.waiting and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if len(seq) > budget or not bm.can_allocate(seq):
                break
            bm.allocate(seq)
            new_tokens = len(seq) - seq.num_computed_tokens
            budget -= new_tokens
            self.num_prefill_tokens_computed += new_tokens
            seq.status = SequenceStatus.RUNNING
            self.waiting.popleft()
            self.running.append(seq)
            scheduled.append(seq)
        return scheduled

    def _schedule_decode(self) -> list[Sequence]:
        bm = self.block_manager
        scheduled: list[Sequence] = []
        queue = deque(self.running)
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
        self.running = scheduled
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
