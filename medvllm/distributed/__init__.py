"""Tensor parallelism over torch.distributed: NCCL on CUDA, gloo on CPU.

Rank 0 (the driver) runs the scheduler and sampler and a shard of the model; ranks 1..N-1 are worker
processes that hold their own shard and run each model step when rank 0 sends it. The engine spawns
the workers itself, or, under `torchrun`, every rank joins the launcher's group (docs/DISTRIBUTED.md).
Nothing here is imported when tensor_parallel_size is 1.
"""

from medvllm.errors import EngineGoneError


class DistributedError(EngineGoneError):
    """A tensor-parallel rank died, could not start, or could not be reached."""
