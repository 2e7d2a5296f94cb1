"""The LM head as int8 rows (weight-only) under dynamic int8, sharing its table with a tied embedding.

The head's rows are the embedding's rows when the two are tied, so one int8 table with one float32
scale per row and group of ROW_GROUP inputs serves both: the float table is gone, and the logits read
about a quarter of the bytes, which is what one-token decode waits on. The hidden state stays float32 (weight-only, "int8-rows"):
quantizing it to one int8 per value as well cost several points of greedy match on the quality gate.
The AMX kernel ("int8-rows-2x8": the input as two int8 parts per value, native/int8_rows_amx.c) takes
rows with one scale each only, so with group scales the head runs on the float path everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medvllm.backends.cpu import int8_linear as native
from medvllm.layers.int8_rows import ROW_GROUP
from medvllm.layers.linear import LinearBase, LinearMethod


@dataclass(frozen=True)
class Int8Rows:
    rows: torch.Tensor  # int8 [out, in]
    scale: torch.Tensor  # float32 [out, ceil(in / ROW_GROUP)]


class Int8RowsHead(LinearMethod):
    frees_weight = True

    def __init__(self, width: int):
        """`width`: the hidden size, which decides whether the kernel takes the AMX path."""
        self.kernel = native.native_rows_kernel()  # raises NativeUnavailable with the reason
        self.name = "int8-rows-2x8" if native.rows_kernel_uses_amx(width, ROW_GROUP) else "int8-rows"

    def pack(self, layer: LinearBase) -> Int8Rows:
        return Int8Rows(*native.int8_rows(layer.weight))

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        out = native.int8_rows_linear(self.kernel, x, layer.packed.rows, layer.packed.scale, ROW_GROUP)
        return out if layer.bias is None else out.add_(layer.bias)
