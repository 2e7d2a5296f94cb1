"""RMSNorm with float32 statistics, optionally fused with the residual add.

The implementation is chosen once per engine (medvllm/backends/select.py) and handed in at
construction: None is the PyTorch reference below; on CPU in float32 the backend passes the C kernel,
the same arithmetic in one pass instead of eight PyTorch ops.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# (x, residual or None, weight, eps) -> norm(x [+ residual]) [, x + residual]
NormKernel = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor, float], object]


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float, kernel: NormKernel | None = None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(size))
        self.kernel = kernel

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without residual: norm(x). With it: (norm(x + residual), x + residual)."""
        if self.kernel is not None:
            return self.kernel(x, residual, self.weight, self.eps)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the weight is stored as an offset from 1 and the product (x * (1 + w)) is taken in
    float32 before the cast back, where Llama casts first. Always the PyTorch path: the kernel multiplies
    by the weight as stored."""

    def __init__(self, size: int, eps: float):
        super().__init__(size, eps, None)

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)
