"""The LM head as int8 rows (weight-only) under dynamic int8, sharing its table with the token embedding.

The head's rows are the embedding's rows (tied on the default model), so one int8 table with one
float32 scale per row serves both: the float table (113 MB on the default model) is gone, and the
logits read a quarter of the bytes, which is what one-token decode waits on. The hidden state stays
float32 (weight-only, "int8-rows"): quantizing it to one int8 per value as well cost 4-7 points of
greedy match on the quality gate. Where the CPU has AMX ("int8-rows-2x8"), it goes to the tiles as two
int8 parts per value (~16 bits, native/int8_rows_amx.c): 64 tokens' logits 16.5 -> 3.3 ms, with the
quality gate's figures as good as the float32 input's (docs/QUALITY.md).
"""
from __future__ import annotations

import torch

from medvllm.layers import cpu_int8_linear as native
from medvllm.layers.linear import LinearBase, LinearMethod


class Int8RowsHead(LinearMethod):
    name = "int8-rows"

    def __init__(self, kernel):
        self.kernel = kernel

    def process_weights_after_loading(self, layer: LinearBase) -> None:
        if native.rows_kernel_uses_amx(layer.weight.shape[1]):
            self.name = "int8-rows-2x8"
        layer.int8_rows, layer.int8_scale = native.int8_rows(layer.weight)
        # a new, empty Parameter: a tied embedding keeps its own until quantize_embedding hands it these rows
        layer.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        out = native.int8_rows_linear(self.kernel, x, layer.int8_rows, layer.int8_scale)
        return out if layer.bias is None else out.add_(layer.bias)
