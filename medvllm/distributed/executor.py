"""TensorParallelExecutor: rank 0's side of a tensor-parallel engine (tensor_parallel_size > 1).

Rank 0 builds its own shard like every rank, and before each forward pass sends the step's inputs to
the workers so that all ranks run the same step; the LM head gathers the logits here, and the sampler
runs here only. A dead worker surfaces as a DistributedError, never a hang.
"""

from __future__ import annotations

import os
import sys
import weakref

from medvllm.config import Config
from medvllm.distributed.channel import to_device
from medvllm.distributed.launcher import Workers
from medvllm.distributed.partition import check_heads
from medvllm.engine.executor import Executor
from medvllm.engine.model_runner import ModelRunner
from medvllm.engine.step_inputs import StepInputs
from medvllm.loader import ModelSource, default_model_path


class TensorParallelExecutor(Executor):
    def __init__(self, config: Config, source: ModelSource, max_model_len: int):
        hf = source.hf_config
        check_heads(
            hf.num_attention_heads,
            hf.num_key_value_heads or hf.num_attention_heads,
            config.tensor_parallel_size,
            source.description,
        )
        self.workers = Workers(config)
        tp = self.workers.start()  # under torchrun, ranks other than 0 serve inside and never return
        # stop the workers when this executor is dropped or the interpreter exits, whichever comes first
        self._finalizer = weakref.finalize(self, self.workers.shutdown)
        if config.resolved_device.type == "cpu" and tp.is_driver and tp.size > 1:
            warn_cpu_speed(config.tensor_parallel_size)
        self.device = config.resolved_device
        with self.workers.guard("while loading the model"):
            self.workers.send(("init", config, model_reference(config, source), max_model_len))
            self.runner = ModelRunner(config, source, max_model_len, tp, broadcast=self._broadcast)

    def _broadcast(self, step: StepInputs) -> StepInputs:
        self.workers.send(("step", step))
        return step if self.device.type == "cpu" else to_device(step, self.device)

    def run(self, seqs, is_prefill):
        with self.workers.guard("during a model step"):
            return super().run(seqs, is_prefill)

    def score(self, token_ids, tables=None):
        with self.workers.guard("during scoring"):
            return super().score(token_ids, tables)

    def shutdown(self) -> None:
        self.workers.shutdown()


def model_reference(config: Config, source: ModelSource) -> str | None:
    """What workers pass to open_model: None for the embedded default (each host finds its own copy)."""
    if config.model is None and os.path.abspath(source.path) == os.path.abspath(default_model_path()):
        return None
    return os.path.abspath(source.path)


def cpu_sockets() -> int:
    """Physical CPU packages on this host (1 when it cannot be told)."""
    base = "/sys/devices/system/cpu"
    ids = set()
    try:
        for name in os.listdir(base):
            path = f"{base}/{name}/topology/physical_package_id"
            if name.startswith("cpu") and os.path.exists(path):
                with open(path) as f:
                    ids.add(f.read().strip())
    except OSError:
        pass
    return max(1, len(ids))


def warn_cpu_speed(tp: int) -> None:
    sockets = cpu_sockets()
    if sockets == 1:
        print(
            f"medvllm: note: tensor_parallel_size={tp} on CPU splits the model over {tp} processes on a "
            "single-socket machine: it will not make it faster (CPU tensor parallelism is for testing and "
            "multi-socket hosts); use tensor_parallel_size=1 for speed",
            file=sys.stderr,
        )
