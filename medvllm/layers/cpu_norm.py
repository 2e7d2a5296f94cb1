"""RMSNorm's C kernel (native/fused_norm.c) as a NormKernel: the same arithmetic as RMSNorm's PyTorch
path in one pass."""
from __future__ import annotations

import ctypes

import torch

from medvllm.layers.native.build import load


def native_rms_norm():
    """The kernel as a NormKernel; raises NativeUnavailable with the reason."""
    fn = load("fused_norm").rms_norm
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_float, ctypes.c_int64, ctypes.c_int64, ctypes.c_int]

    def rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
        x = x.contiguous()
        out = torch.empty_like(x)
        summed = None if residual is None else torch.empty_like(x)
        rows = x.numel() // x.shape[-1]
        fn(out.data_ptr(), None if summed is None else summed.data_ptr(), x.data_ptr(),
           None if residual is None else residual.contiguous().data_ptr(), weight.data_ptr(), eps, rows,
           x.shape[-1], torch.get_num_threads())
        return out if residual is None else (out, summed)

    return rms_norm
