"""Float32 Linears on CPU with their weights in native/f32_panels.c's packed layout.

The weight is repacked once after loading and the plain [out, in] copy released, so it is held once.
Every call then runs the native kernel: decode steps of any batch (one token to 256: 1.05-1.6x
PyTorch's F.linear on the default model's shapes, weights read from memory) and prompt steps (2,048
tokens: ~5% behind MKL's large-matrix blocking). The fused decoder layer (cpu_decode_layer.py) reads
the same panels. The LM head too: 49152 x 576 at 64 tokens 11.4 ms with oneDNN's packing
(cpu_linear.py, the fallback without a C compiler) -> 8.9 ms, at one token 2.5 -> 2.1 ms. Same float32
arithmetic as F.linear, in a fixed order per output: one multiply-add chain over the inputs, then the bias.
"""
from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.build import NativeUnavailable
from medvllm.layers.linear import UNQUANTIZED, LinearBase, LinearMethod

PANEL_COLS = 48  # output columns per panel (PANEL_COLS in f32_panels.c)


def _library():
    binding.library()
    return binding


def pack_panels(lib, weight: torch.Tensor) -> torch.Tensor:
    """float32 [out, in] -> its panels (a flat float32 tensor in f32_panels.c's layout)."""
    weight = weight.detach().contiguous()
    n_out, n_in = weight.shape
    panels = torch.empty(lib.f32_panels_size(n_out, n_in), dtype=torch.float32)
    lib.f32_panels_pack(panels, weight, torch.get_num_threads())
    return panels


def unpack_panels(panels: torch.Tensor, n_out: int, n_in: int) -> torch.Tensor:
    """The float32 [n_out, n_in] weight back from its panels (a copy)."""
    return panels.view(-1, n_in, PANEL_COLS).transpose(1, 2).reshape(-1, n_in)[:n_out].clone()


def panel_linear(lib, x: torch.Tensor, panels: torch.Tensor, n_out: int, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., in] float32 -> [..., n_out] float32."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    lib.f32_panels_linear(out, rows, panels, bias, torch.get_num_threads())
    return out.view(*x.shape[:-1], n_out)


class PanelFloatMethod(LinearMethod):
    name = "float-panels"

    def __init__(self, lib):
        self.lib = lib

    def process_weights_after_loading(self, layer: LinearBase) -> None:
        layer.f32_panels = pack_panels(self.lib, layer.weight)  # this rank's [out_features, in_features]
        # a new, empty Parameter: the plain copy is freed, except where it is the token embedding's too
        # (a tied LM head), which keeps it
        layer.weight = torch.nn.Parameter(torch.empty(0, dtype=torch.float32), requires_grad=False)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.detach()
        return panel_linear(self.lib, x, layer.f32_panels, layer.out_features, bias)


def use_float_panels(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Give every still-float32 Linear of a CPU model (the decoder layers' and the LM head) packed
    panels; returns how many (0 where the native kernels cannot be built: cpu_linear.py's oneDNN
    packing then takes the head, and the decoder layers keep F.linear)."""
    if dtype != torch.float32:
        return 0
    try:
        method = PanelFloatMethod(_library())
    except NativeUnavailable:
        return 0
    layers = [m for m in model.modules() if isinstance(m, LinearBase) and m.method is UNQUANTIZED
              and m.weight.dtype == torch.float32 and m.weight.device.type == "cpu"]
    for layer in layers:
        method.process_weights_after_loading(layer)
        layer.method = method
    return len(layers)
