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

    def kernel_weight(self) -> torch.Tensor:
        """What the kernel multiplies by (the kernel is only given to float32 engines)."""
        return self.weight

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """Without residual: norm(x). With it: (norm(x + residual), x + residual)."""
        if self.kernel is not None:
            return self.kernel(x, residual, self.kernel_weight(), self.eps)
        if residual is None:
            return self._norm(x)
        x = x + residual
        return self._norm(x), x


class GemmaRMSNorm(RMSNorm):
    """Gemma's RMSNorm: the weight is stored as an offset from 1 and the product (x * (1 + w)) is taken in
    float32 before the cast back, where Llama casts first. In a float32 engine that is the kernel's
    arithmetic with 1 + w as its weight (made once, again only if the weight changes)."""

    def __init__(self, size: int, eps: float, kernel: NormKernel | None = None):
        super().__init__(size, eps, kernel)
        self._plus_one: tuple[int, torch.Tensor] | None = None  # (weight version, 1 + w in float32)

    def kernel_weight(self) -> torch.Tensor:
        version = self.weight._version
        if self._plus_one is None or self._plus_one[0] != version:
            self._plus_one = version, (1.0 + self.weight.detach().float()).contiguous()
        return self._plus_one[1]

    def _norm(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (x32 * (1.0 + self.weight.float())).type_as(x)
