"""Float32 Linears on CPU with their weights in native/f32_panels.c's packed layout.

The weight is repacked once after loading and the plain [out, in] copy released, so it is held once.
Every call then runs the native kernel, decode steps of any batch and prompt steps alike (the
figures against PyTorch's F.linear are in docs/ARCHITECTURE.md); the fused decoder layer
(decode_layer.py) reads the same panels, and so does the LM head. Same float32 arithmetic as
F.linear, in a fixed order per output: one multiply-add chain over the inputs, then the bias.
"""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.layers.linear import LinearBase, LinearMethod

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
    frees_weight = True  # a tied LM head lets go of the table, which stays the token embedding's

    def __init__(self):
        self.lib = _library()  # raises NativeUnavailable with the reason

    def pack(self, layer: LinearBase) -> torch.Tensor:
        return pack_panels(self.lib, layer.weight)  # this rank's [out_features, in_features]

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.detach()
        return panel_linear(self.lib, x, layer.packed, layer.out_features, bias)
