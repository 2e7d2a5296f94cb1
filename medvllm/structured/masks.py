"""Token masks of a step's constrained sequences, computed on a thread while the model runs the step.

llguidance computes the masks in native code that releases the GIL, on its own thread pool
(LLExecutor), so the mask work overlaps the forward pass instead of adding to it. The masks are bit
sets, one bit per token (32 tokens per int32, llguidance's layout); the Sampler unpacks and applies
them to the rows that have one.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import Future, ThreadPoolExecutor

import torch

from medvllm.structured.state import GrammarState


class MaskBuilder:
    def __init__(self, vocab_size: int, threads: int | None = None):
        import llguidance

        self.words = (vocab_size + 31) // 32
        # a thread per core would compete with the forward pass it overlaps: at most half the cores
        self._executor = llguidance.LLExecutor(num_threads=threads or max(1, (os.cpu_count() or 2) // 2))
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="medvllm-masks")
        self.total_s = 0.0  # time spent building masks (on the mask thread), for the benchmark
        self.num_steps = 0

    def start(self, rows: list[tuple[int, GrammarState, object]]) -> Future | None:
        """Starts the masks of `rows` (row in the sampling batch, its state, its engine Sequence: only its
        token_ids and num_prompt_tokens are read, and nothing appends to them while the step runs);
        the future gives (row indices [R] long, bit masks [R, words] int32). None when no row has a grammar."""
        if not rows:
            return None
        return self._thread.submit(self._build, rows)

    def _build(self, rows) -> tuple[torch.Tensor, torch.Tensor]:
        from llguidance.torch import fill_next_token_bitmask_par

        started = time.perf_counter()
        for _, state, seq in rows:
            state.sync(seq.token_ids, seq.num_prompt_tokens)
        bits = torch.full((len(rows), self.words), -1, dtype=torch.int32)
        fill_next_token_bitmask_par(self._executor, [(s.matcher, i) for i, (_, s, _) in enumerate(rows)], bits)
        index = torch.tensor([row for row, _, _ in rows], dtype=torch.long)
        self.total_s += time.perf_counter() - started
        self.num_steps += 1
        return index, bits
