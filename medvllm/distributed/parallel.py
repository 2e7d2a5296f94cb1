"""TensorParallel: which rank this process is, and the two collectives the model's layers need.

Layers hold one of these. With size 1 (the default, `SINGLE`) no layer communicates and no process
group exists: tensor_parallel_size=1 runs exactly the single-process code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class TensorParallel:
    rank: int = 0
    size: int = 1
    group: object = None  # the process group activations travel on (nccl on CUDA, gloo on CPU)
    control: object = None  # a gloo group for step inputs and start-up agreement (long timeout)

    @property
    def is_driver(self) -> bool:
        return self.rank == 0

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of x over all ranks, in place (row-parallel outputs, vocab-parallel embeddings)."""
        dist.all_reduce(x, group=self.group)
        return x

    def gather_last_dim(self, x: torch.Tensor, sizes: list[int]) -> torch.Tensor | None:
        """Concatenate every rank's x along the last dim on rank 0 (None elsewhere).

        `sizes` are the ranks' widths; collectives need equal shapes, so narrower shares are padded.
        """
        width = max(sizes)
        if x.shape[-1] < width:
            x = torch.nn.functional.pad(x, (0, width - x.shape[-1]))
        x = x.contiguous()
        parts = [torch.empty_like(x) for _ in sizes] if self.is_driver else None
        dist.gather(x, parts, dst=0, group=self.group)
        if not self.is_driver:
            return None
        return torch.cat([p[..., :n] for p, n in zip(parts, sizes)], dim=-1)

    def min_over_ranks(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(t, op=dist.ReduceOp.MIN, group=self.control)
        return int(t.item())


SINGLE = TensorParallel()
