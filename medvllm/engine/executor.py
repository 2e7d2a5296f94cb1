"""Executor: what the engine drives to run the model, in this process or over tensor-parallel ranks.

The engine only calls `run`, `score` and `shutdown`, and reads what ran from `runner` (rank 0's
ModelRunner). LocalExecutor runs one process; medvllm/distributed/executor.py's TensorParallelExecutor
runs rank 0 here and the other ranks in worker processes.
"""

from __future__ import annotations

from medvllm.config import Config
from medvllm.engine.model_runner import ModelRunner
from medvllm.engine.sequence import Sequence
from medvllm.loader import ModelSource


class Executor:
    runner: ModelRunner

    def run(self, seqs: list[Sequence], is_prefill: bool):
        """One forward pass + sampling: (token ids, logprobs or None) for the sequences that sample."""
        return self.runner.run(seqs, is_prefill)

    def score(self, token_ids: list[int], tables: tuple[list[int], list[int]] | None = None):
        """Teacher-forced logits [T, V] for every position of one sequence."""
        return self.runner.score(token_ids, tables)

    def shutdown(self) -> None:
        """Release what the executor started (worker processes); the engine is unusable afterwards."""


class LocalExecutor(Executor):
    def __init__(self, config: Config, source: ModelSource, max_model_len: int):
        self.runner = ModelRunner(config, source, max_model_len)


def make_executor(config: Config, source: ModelSource, max_model_len: int) -> Executor:
    if config.tensor_parallel_size > 1:  # worker processes over torch.distributed; see medvllm/distributed
        from medvllm.distributed.executor import TensorParallelExecutor

        return TensorParallelExecutor(config, source, max_model_len)
    return LocalExecutor(config, source, max_model_len)
