"""Float32 linear layers on CPU with their weights pre-packed for oneDNN, where the engine's own
packed panels (cpu_panel_linear.py) cannot be built (no C compiler): the LM head and any float layer
outside the decoder layers.

F.linear hands MKL the plain [out, in] weight at every call and MKL re-blocks it each time; packing
once at load time into oneDNN's blocked layout saves that work. Measured on an AVX2 machine on the
default model's shapes: the 49152x576 LM head at 64 rows 53 -> 29 ms, at one row 8.5 -> 4.9 ms.
The decoder layers stay plain here: oneDNN's packing did not pay for them on an AVX-512 machine (the
120 Linears of the default model: 1 row 16.4 ms plain / 20.1 packed, 64 rows 61.6 / 61.7, 2,048 rows
1063 / 1093; 8 rows 33.5 / 25.5). Same float32 arithmetic, only the summation order differs.
"""
from __future__ import annotations

import torch

from medvllm.layers.linear import LinearMethod

PACK_FOR_ROWS = 64  # oneDNN picks its blocking for this many rows; any row count works with it


def packing_available(dtype: torch.dtype) -> bool:
    return (dtype == torch.float32 and torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedFloatMethod(LinearMethod):
    name = "float-packed"

    def process_weights_after_loading(self, layer) -> None:
        packed = torch.ops.mkldnn._reorder_linear_weight(layer.weight.detach(), PACK_FOR_ROWS)
        # a weight tied to the embedding table stays there too: the packed copy is the head's own
        layer.weight = torch.nn.Parameter(packed, requires_grad=False)

    def apply(self, layer, x: torch.Tensor) -> torch.Tensor:
        bias = layer.bias if layer.bias is None else layer.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, layer.weight, bias, "none", [], "")


def pack_float_linears(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Give every still-float linear layer of a CPU model outside its decoder layers packed weights;
    returns how many."""
    from medvllm.layers.linear import UNQUANTIZED, LinearBase
    if not packing_available(dtype):
        return 0
    method = PackedFloatMethod()
    decoder = getattr(getattr(model, "model", None), "layers", None)
    inside = {id(m) for m in decoder.modules()} if isinstance(decoder, torch.nn.Module) else set()
    layers = [m for m in model.modules()
              if isinstance(m, LinearBase) and m.method is UNQUANTIZED and id(m) not in inside]
    for layer in layers:
        method.process_weights_after_loading(layer)
        layer.method = method
    return len(layers)
