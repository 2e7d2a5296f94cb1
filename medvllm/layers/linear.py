"""Linear layers whose weight storage and matmul belong to a pluggable LinearMethod.

The model says *what* a projection is (replicated, column-split, row-split across tensor-parallel
ranks); a LinearMethod says *how* it is stored and multiplied (float, dynamic int8, bitsandbytes).
Quantization swaps the method after the float weights are loaded; the model code never changes.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class LinearMethod:
    """How a linear layer holds its weight and computes x @ W.T + b."""

    name = "float"

    def process_weights_after_loading(self, layer: "LinearBase") -> None:
        """Convert the loaded float weight (e.g. quantize it) and free what is no longer needed."""

    def apply(self, layer: "LinearBase", x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


UNQUANTIZED = LinearMethod()


class LinearBase(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.method: LinearMethod = UNQUANTIZED

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, method={self.method.name}"


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight (the LM head, small projections)."""


class ColumnParallelLinear(LinearBase):
    """Output features split across tensor-parallel ranks; no communication needed after it."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input in one matmul (q/k/v, gate/up); `output_sizes` in order."""

    def __init__(self, in_features: int, output_sizes: list[int], bias: bool = False):
        super().__init__(in_features, sum(output_sizes), bias)
        self.output_sizes = list(output_sizes)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """(start, size) of one merged projection's rows in this layer's weight."""
        return sum(self.output_sizes[:shard]), self.output_sizes[shard]


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed (all-reduce) after it."""
