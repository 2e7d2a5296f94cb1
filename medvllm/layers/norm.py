"""RMSNorm with float32 statistics, optionally fused with the residual add.

On CPU in float32, `use_native_norms` gives every RMSNorm of a model the C kernel of
native/fused_norm.c: the same arithmetic in one pass instead of eight PyTorch ops.
"""
from __future__ import annotations

import ctypes

import torch
from torch import nn

from medvllm.backends.cpu.native.build import NativeUnavailable, load


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
        rows = x.numel() // x.shape[-1]
        self.native(out.data_ptr(), None if summed is None else summed.data_ptr(), x.data_ptr(),
                    None if residual is None else residual.contiguous().data_ptr(), self.weight.data_ptr(),
                    self.eps, rows, x.shape[-1], torch.get_num_threads())
        return out if residual is None else (out, summed)


def use_native_norms(model: nn.Module, device: torch.device, dtype: torch.dtype) -> str:
    """Give a float32 CPU model's norms the C kernel; returns which implementation runs ("native" or
    "torch")."""
    if device.type != "cpu" or dtype != torch.float32:
        return "torch"
    try:
        fn = load("fused_norm").rms_norm
    except NativeUnavailable:
        return "torch"
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]
    norms = [m for m in model.modules() if isinstance(m, RMSNorm)]
    for norm in norms:
        norm.native = fn
    return "native"
