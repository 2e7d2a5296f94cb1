"""Dynamic int8 on CPU: int8 weights per output channel, activations quantized per token at run time.

The matmul is fbgemm's u8 x s8 -> s32 kernel (`torch.ops.quantized.linear_dynamic`), the one int8 path
that beat float32 on the CPUs we measured (see benchmarks/int8_cpu.py; torch._int_mm, the weight-only
int8 kernel and torchao's int8 config were 3-30x slower than float32 there). That kernel quantizes its
input per tensor; we make that per token by scaling each row to [-1, 1] first and multiplying the
rows back afterwards (the matmul is linear in each row). A constant extra row pins the kernel's
range to exactly [-1, 1], so a row's result never depends on the other rows in the batch.

Weights use 7 bits of the int8 range (|q| <= 63): on AVX2 the kernel sums pairs of u8*s8 products in
int16, which saturates for full-range weights (255 * 127 * 2 > 32767) and measurably wrecked the
default model's answers; 255 * 63 * 2 fits.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from medvllm.errors import ConfigError
from medvllm.layers.linear import LinearBase, LinearMethod

WEIGHT_QMAX = 63
_TINY = 1e-12


class DynamicInt8Method(LinearMethod):
    name = "dynamic-int8"
    kernel = "fbgemm"

    def __init__(self):
        if "fbgemm" not in torch.backends.quantized.supported_engines:
            raise ConfigError("quantization_method='dynamic' needs PyTorch's fbgemm int8 kernels, which this "
                              "build of torch lacks (x86-64 builds have them): drop quantization on this machine")

    def process_weights_after_loading(self, layer: LinearBase) -> None:
        weight = layer.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ConfigError(f"quantization_method='dynamic' needs float32 weights on the CPU, got "
                              f"{weight.dtype} on {weight.device}: turn mixed precision off and use device='cpu'")
        layer.packed_int8 = pack_weight(weight)
        layer.int8_weight_bytes = weight.numel() + 3 * 4 * weight.shape[0]  # int8 + scale/zero/offset per row
        free_float_weight(layer)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        n = rows.shape[0]
        amax = rows.abs().amax(dim=-1, keepdim=True).clamp_(min=_TINY)
        scaled = rows.new_empty(n + 1, rows.shape[1])
        torch.div(rows, amax, out=scaled[:n])
        scaled[n].copy_(_range_row(rows.shape[1]))
        out = torch.ops.quantized.linear_dynamic(scaled, layer.packed_int8, False)[:n].mul_(amax)
        if layer.bias is not None:
            out.add_(layer.bias)
        return out.reshape(*x.shape[:-1], out.shape[-1])


def pack_weight(weight: torch.Tensor):
    """float [out, in] -> fbgemm's packed int8 weight, one symmetric scale per output row."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / WEIGHT_QMAX).clamp(min=_TINY).double()
    zero = torch.zeros(w.shape[0], dtype=torch.long)
    with _quiet(), _engine("fbgemm"):
        q = torch.quantize_per_channel(w, scale, zero, 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(q, None)


def free_float_weight(layer: LinearBase) -> None:
    """Release the float weight's memory now (the loader may still hold the Parameter object)."""
    layer.weight.data = torch.empty(0, dtype=layer.weight.dtype, device=layer.weight.device)


_RANGE_ROWS: dict[int, torch.Tensor] = {}


def _range_row(width: int) -> torch.Tensor:
    row = _RANGE_ROWS.get(width)
    if row is None:
        row = torch.zeros(width)
        row[0], row[-1] = 1.0, -1.0
        _RANGE_ROWS[width] = row
    return row


@contextmanager
def _quiet():
    # torch marks quantized-tensor creation as deprecated; the warning is about its API, not our results
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


@contextmanager
def _engine(name: str):
    # the packed format follows the global engine at pack time; set it for the call only
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = name
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous
