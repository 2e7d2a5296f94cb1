"""RMSNorm's C kernel (native/fused_norm.c) as a NormKernel: the same arithmetic as RMSNorm's PyTorch
path in one pass instead of eight ops."""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding


def native_rms_norm():
    """The kernel as a NormKernel; raises NativeUnavailable with the reason."""
    binding.library()

    def rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
        x = x.contiguous()
        out = torch.empty_like(x)
        summed = None if residual is None else torch.empty_like(x)
        binding.rms_norm(
            out, summed, x, None if residual is None else residual.contiguous(), weight, eps, torch.get_num_threads()
        )
        return out if residual is None else (out, summed)

    return rms_norm
