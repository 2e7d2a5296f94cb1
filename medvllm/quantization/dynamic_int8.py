"""Dynamic int8 on CPU: int8 weights with a scale per output channel and group of GROUP inputs,
activations quantized per token and group of GROUP inputs at run time (no calibration).

The matmul is the native kernel (medvllm/backends/cpu/native/int8_linear.c): full-range weights
(|q| <= 127) held once at one byte each in the kernel's panel layout, with a float32 scale and an int32
column sum per group beside them; activations quantized inside the kernel; exact int32 sums per group,
added up in float32 in one order on every path. One scale per token made one outlier input cost the
token's other inputs their precision: on the default model groups of 32 took mean KL from 0.079 to
0.008 (docs/QUALITY.md, which has the variants measured). Without a C compiler the method is refused:
no other kernel computes the same numbers, and `quality compare` measured these.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medvllm.backends.cpu import int8_linear as native
from medvllm.errors import ConfigError
from medvllm.layers.linear import LinearBase, LinearMethod

GROUP = 32  # inputs per scale group (docs/QUALITY.md: the measured choice)


@dataclass(frozen=True)
class Int8Panels:
    panels: torch.Tensor  # int8 [out/16, in/4, 16, 4]
    scale: torch.Tensor  # float32 [out/16, groups, 16]
    col_sums: torch.Tensor  # int16 [out/16, groups, 16]
    group: int  # inputs per group
    n_out: int

    @property
    def nbytes(self) -> int:
        return self.panels.numel() + 4 * self.scale.numel() + 2 * self.col_sums.numel()


class DynamicInt8Method(LinearMethod):
    name = "dynamic-int8"
    kernel = "native"
    frees_weight = True

    def __init__(self):
        self.native = native.native_int8_kernel()  # raises NativeUnavailable with the reason

    def pack(self, layer: LinearBase) -> Int8Panels:
        weight = layer.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ConfigError(
                f"quantization_method='dynamic' needs float32 weights on the CPU, got "
                f"{weight.dtype} on {weight.device}: use dtype='float32' and device='cpu'"
            )
        return Int8Panels(*native.pack_int8(weight, GROUP), GROUP, weight.shape[0])

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        p = layer.packed
        bias = None if layer.bias is None else layer.bias.detach()
        return native.int8_linear(self.native, x, p.panels, p.scale, p.col_sums, p.group, p.n_out, bias)
