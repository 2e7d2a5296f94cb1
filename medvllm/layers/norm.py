"""RMSNorm with float32 statistics, optionally fused with the residual add.

On CPU in float32, `use_native_norms` gives every RMSNorm of a model the C kernel of
native/fused_norm.c: the same arithmetic in one pass instead of eight PyTorch ops.
"""
from __future__ import annotations

import torch
from torch import nn

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.build import NativeUnavailable


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.native = None  # the C kernel, set by use_native_norms

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without residual: norm(x). With it: (norm(x + residual), x + residual)."""
        if self.native is not None:
            return self._native(x, residual)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x

    def _native(self, x: torch.Tensor, residual: torch.Tensor | None):
        x = x.contiguous()
        out = torch.empty_like(x)
        summed = None if residual is None else torch.empty_like(x)
        self.native(out, summed, x, None if residual is None else residual.contiguous(), self.weight, self.eps,
                    torch.get_num_threads())
        return out if residual is None else (out, summed)


def use_native_norms(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Give a float32 CPU model's norms the C kernel; returns which implementation runs ("native" or
    "torch")."""
    if device.type != "cpu" or dtype != torch.float32:
        return "torch"
    try:
        binding.library()
    except NativeUnavailable:
        return "torch"
    fn = binding.rms_norm
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for norm in norms:
        norm.native = fn
    return "native"
