"""The sampler's greedy pick on CPU: native/first_max.c, argmax's answer (the first of the largest
values, NaN first as torch.max has it) in one pass over float32 rows."""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.layers.sampler import first_max


def native_first_max():
    """The kernel as the Sampler's argmax; raises NativeUnavailable with the reason."""
    binding.library()

    def argmax(x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dtype != torch.float32 or x.dim() != 2:
            return first_max(x)
        x = x.contiguous()
        out = torch.empty(x.shape[0], dtype=torch.int64)
        binding.first_max(out, x, torch.get_num_threads())
        return out

    return argmax
