"""Dynamic int8 on CPU: int8 weights per output channel, activations quantized per token at run time.

Two kernels, the choice recorded in runtime_info["quantization"]["kernel"]:
- "native" (backends/cpu/native/int8_linear.c), used wherever the C kernels build: full-range weights
  (|q| <= 127) held once at one byte each, activations quantized inside the kernel, exact int32 sums.
  Measured here (2 threads, AVX2, the default model's four Linear shapes summed, benchmarks/int8_cpu.py):
  faster than float32 at every row count from 1 to 2,048; 2-4x faster than fbgemm at 1-16 rows (decode),
  even at 64, and 2-12% slower than it from 128 rows up (prefill).
- "fbgemm" (`torch.ops.quantized.linear_dynamic`), where no C compiler is found. That kernel
  quantizes its input per tensor; we make that per token by scaling each row to [-1, 1] first and
  multiplying the rows back afterwards (the matmul is linear in each row). A constant extra row pins
  the kernel's range to exactly [-1, 1], so a row's result never depends on the other rows in the batch.
  Its weights use 7 bits of the int8 range (|q| <= 63): on AVX2 it sums pairs of u8*s8 products in
  int16, which saturates for full-range weights (255 * 127 * 2 > 32767) and measurably wrecked the
  default model's answers; 255 * 63 * 2 fits. Its packed form pads the input dimension to its block size.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager

import torch

from medvllm.errors import ConfigError
from medvllm.layers import cpu_int8_linear as native
from medvllm.layers.linear import LinearBase, LinearMethod
from medvllm.backends.cpu.native.build import NativeUnavailable

FBGEMM_WEIGHT_QMAX = 63
_TINY = 1e-12


class DynamicInt8Method(LinearMethod):
    name = "dynamic-int8"
    quantizes_embedding = True  # the token embedding is held as int8 rows as well (quantize_embedding)

    def __init__(self, kernel: str | None = None):
        """kernel: "native" or "fbgemm"; None takes the native kernel where it builds."""
        self.native = None
        if kernel in (None, "native"):
            try:
                self.native = native.native_int8_kernel()
            except NativeUnavailable as e:
                if kernel == "native":
                    raise ConfigError(f"the native int8 kernel is unavailable here ({e}): install gcc") from None
        self.kernel = "native" if self.native is not None else "fbgemm"
        self.rows_kernel = None  # the LM head's weight-only kernel (quantization.int8_head), if it builds
        if self.native is not None:
            try:
                self.rows_kernel = native.native_rows_kernel()
            except NativeUnavailable:
                pass
        self.weight_qmax = native.QMAX if self.native is not None else FBGEMM_WEIGHT_QMAX
        if self.native is None and "fbgemm" not in torch.backends.quantized.supported_engines:
            raise ConfigError("quantization_method='dynamic' needs a C compiler for its int8 kernel (install gcc) "
                              "or PyTorch's fbgemm kernels, which this build of torch lacks: drop quantization here")

    def process_weights_after_loading(self, layer: LinearBase) -> None:
        weight = layer.weight.detach()
        if weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ConfigError(f"quantization_method='dynamic' needs float32 weights on the CPU, got "
                              f"{weight.dtype} on {weight.device}: turn mixed precision off and use device='cpu'")
        if self.native is not None:
            layer.int8_panels, layer.int8_scale = native.pack_int8(weight)
            layer.int8_col_sums = native.column_sums(layer.int8_panels)
            layer.int8_weight_bytes = (layer.int8_panels.numel() + 4 * layer.int8_scale.numel()
                                       + 4 * layer.int8_col_sums.numel())
        else:
            layer.packed_int8 = pack_weight(weight)
            # fbgemm's own padding is not counted here: int8 + scale/zero/offset per row
            layer.int8_weight_bytes = weight.numel() + 3 * 4 * weight.shape[0]
        free_float_weight(layer)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            bias = None if layer.bias is None else layer.bias.detach()
            return native.int8_linear(self.native, x, layer.int8_panels, layer.int8_scale, bias, layer.int8_col_sums)
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
    """float [out, in] -> fbgemm's packed int8 weight, one symmetric scale per output row (7 bits)."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / FBGEMM_WEIGHT_QMAX).clamp(min=_TINY).double()
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
