"""Scheduler: continuous batching over the block manager.

A step is one of three kinds:
- decode: one token for every running request (no prompt work waiting: the fast path);
- prefill: no stream is decoding, so prompts take the whole max_num_batched_tokens budget;
- mixed: a stream (a request whose tokens are handed out as they come) is decoding: every running
  request's decode token plus up to mixed_prompt_tokens prompt tokens. A long prompt is then spread over
  many steps while streams keep getting a token each step, instead of every stream stalling until the
  prompt is done. Requests answered whole (offline batches, non-streamed API calls) are judged by when
  they finish, not by the gaps between their tokens: with no stream decoding, prompts go first at the
  full budget, which keeps batch throughput where it was (small prompt chunks admit a batch slowly). The runner sees it as a prefill step in which a decoding request is
  a one-token chunk (queries of varying length over per-sequence contexts); the prompt chunks that finish
  their prompt sample with the decode tokens, inner chunks do not. With mixed_prompt_tokens=0, waiting
  prompts run in prefill steps of their own and decoding waits (the engine before mixed steps).
A prefill or mixed step first continues prompts already split over steps, then admits waiting requests,
the last of them cut to what is left of the budget (chunked prefill: the step's activations stay bounded
by the budget, not by the longest prompt).

A waiting request is admitted only if the free blocks also cover what the running requests will still
write up to their max_tokens: a small KV pool then runs fewer requests at once instead of admitting
them all and recomputing the ones it must preempt (64 requests in a pool for ~30 computed 65% more
prompt tokens that way). Requests without max_tokens are counted one block ahead. When a decode
step still runs out of blocks, a running request is preempted (the newest; under the priority policy
the lowest priority, newest first): its blocks are freed and it goes back to the queue, to be recomputed
later; nothing is lost. A split prompt that finds no blocks for its next chunk is preempted the same way
(its finished blocks stay in the prefix cache, so the recompute resumes from them). Under the priority
policy a waiting request that does not fit also preempts running requests of lower priority
(engine/policy.py).
"""

from __future__ import annotations

import itertools
from collections import deque

from medvllm.config import Config
from medvllm.engine.block_manager import BlockManager
from medvllm.engine.policy import Policy
from medvllm.engine.sequence import Sequence, SequenceStatus
from medvllm.engine.window_blocks import WindowBlocks


class Scheduler:
    def __init__(self, config: Config, num_blocks: int, max_model_len: int, window_pool: tuple[int, int] | None = None):
        """`window_pool`: (blocks, window) of the sliding-window layers' own pool, where they have one."""
        self.max_num_seqs = config.max_num_seqs
        self.max_model_len = max_model_len
        self.max_num_batched_tokens = config.max_num_batched_tokens
        self.mixed_prompt_tokens = min(config.mixed_prompt_tokens or 0, config.max_num_batched_tokens)
        self.policy = Policy(config.scheduling_policy)
        # an unpooled CPU cache maps pages in as blocks are first written (engine/kv_cache.py)
        lazy_pages = config.resolved_device.type == "cpu" and not config.enable_memory_pooling
        window = None
        if window_pool is not None:
            window = WindowBlocks(*window_pool, block_size=config.kvcache_block_size, reuse_first=lazy_pages)
        self.block_manager = BlockManager(
            num_blocks, config.kvcache_block_size, config.enable_prefix_caching, reuse_first=lazy_pages, window=window
        )
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self._arrivals = itertools.count()
        self.num_preemptions = 0
        self.num_prefill_tokens_computed = 0  # prompt tokens actually run through the model
        self.num_mixed_steps = 0

    def add(self, seq: Sequence) -> None:
        seq.arrival = next(self._arrivals)
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> tuple[list[Sequence], bool]:
        """The step's sequences and whether the runner treats it as a prefill (prompt or mixed) step."""
        self.policy.order_waiting(self)
        prompts_pending = bool(self.waiting) or any(s.is_prefilling for s in self.running)
        if not prompts_pending:
            return self._schedule_decode(), False
        if self.mixed_prompt_tokens and any(s.stream and not s.is_prefilling for s in self.running):
            return self._schedule_mixed()
        scheduled = self._schedule_prefill([], self.max_num_batched_tokens)
        if scheduled:
            return scheduled, True
        return self._schedule_decode(), False

    def _schedule_mixed(self) -> tuple[list[Sequence], bool]:
        decodes = self._schedule_decode()
        for seq in decodes:  # a one-token chunk: the step computes its newest token
            seq.prefill_end = len(seq)
        budget = min(self.mixed_prompt_tokens, self.max_num_batched_tokens - len(decodes))
        scheduled = self._schedule_prefill(list(decodes), budget)
        if all(seq in decodes for seq in scheduled):  # no prompt fitted: a plain decode step
            for seq in scheduled:
                seq.prefill_end = None
            return scheduled, False
        self.num_mixed_steps += bool(decodes)
        return scheduled, True

    def _schedule_prefill(self, scheduled: list[Sequence], budget: int) -> list[Sequence]:
        """Adds prompt chunks to `scheduled` (the step's decode tokens, if any) up to `budget` prompt tokens."""
        bm = self.block_manager
        preempted: list[Sequence] = []
        candidates = [s for s in self.running if s.is_prefilling] + list(self.waiting)
        for seq in self.policy.prompt_order(candidates):
            if budget == 0:
                break
            if seq in preempted:  # made room for a more urgent request in this very step
                continue
            if seq.status == SequenceStatus.RUNNING:  # the next chunk of a prompt split over steps
                upto = min(len(seq), seq.num_computed_tokens + budget)
                if not bm.can_grow(seq, upto):
                    self.running.remove(seq)
                    self._preempt(seq)
                    continue
                bm.grow(seq, upto)
            else:
                upto = self._admit(seq, budget, scheduled, preempted)
                if upto is None:
                    break  # first come (or most urgent) first: later requests do not overtake it
            budget -= self._schedule_chunk(seq, upto)
            scheduled.append(seq)
        return scheduled

    def _admit(self, seq: Sequence, budget: int, scheduled: list[Sequence], preempted: list[Sequence]):
        """Moves a waiting request to running with blocks for its first chunk; returns the chunk's end, or
        None when it does not fit (after preempting what the policy allows)."""
        bm = self.block_manager
        while True:
            upto = min(len(seq), bm.num_cached_tokens(seq) + budget)
            own_growth = max(0, self._final_blocks(seq) - -(-upto // bm.block_size))
            reserved = sum(self._growth_blocks(s) for s in self.running)
            if len(self.running) < self.max_num_seqs and bm.can_allocate(seq, upto, reserved + own_growth):
                break
            victim = self.policy.victim_for(seq, self.running)
            if victim is None:
                return None
            self._preempt_running(victim, scheduled)
            preempted.append(victim)
        bm.allocate(seq, upto)
        seq.status = SequenceStatus.RUNNING
        self.waiting.remove(seq)
        self.running.append(seq)
        return upto

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
        # the most urgent first, so that running out of blocks preempts from the other end
        queue = deque(self.policy.decode_order([s for s in self.running if not s.is_prefilling]))
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

    def _preempt_running(self, seq: Sequence, scheduled: list[Sequence]) -> None:
        """Preempts a running request, taking it out of the step being built if it was in it."""
        if seq in scheduled:
            scheduled.remove(seq)
            # the blocks this step would have filled were named for reuse when it was scheduled
            self.block_manager.forget_uncomputed(seq)
            if seq.is_prefilling:  # its prompt chunk was counted; a decode token is not
                self.num_prefill_tokens_computed -= seq.prefill_end - seq.num_computed_tokens
            seq.prefill_end = None
        self.running.remove(seq)
        self._preempt(seq)

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
