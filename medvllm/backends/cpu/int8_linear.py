"""The native int8 kernels on CPU: packing weights for them, and calling them.

- int8_linear.c (dynamic int8): the weight is held once, as int8 in the kernel's panel layout, with one
  float32 scale per output channel: 1 byte per weight plus 4 per row.
- int8_rows_matmul.c (weight-only): plain int8 rows with a scale each, float activations; the LM head
  uses it, sharing its rows with the token embedding (int8_rows_amx.c where the CPU has AMX).
"""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.layers.int8_rows import int8_rows

PANEL = 16  # output columns per packed panel (PANEL in int8_linear.c)


def native_int8_kernel():
    """The loaded kernel, or raises NativeUnavailable with the reason."""
    binding.library()
    return binding.int8_linear


def native_rows_kernel():
    """The loaded weight-only kernel, or raises NativeUnavailable with the reason."""
    binding.library()
    return binding.int8_rows_matmul


def rows_kernel_uses_amx(width: int) -> bool:
    """Whether the weight-only kernel runs on AMX tiles for rows of this width (int8_rows_amx.c:
    activations as two int8 parts, ~16 bits) rather than with float32 activations."""
    binding.library()
    return binding.int8_rows_uses_amx(width)


def pack_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float [out, in] -> (int8 panels [out/16, in/4, 16, 4], float32 scale [out]); symmetric per row."""
    n_out, n_in = weight.shape
    q, scale = int8_rows(weight)
    padded = torch.zeros(-(-n_out // PANEL) * PANEL, -(-n_in // 4) * 4, dtype=torch.int8)
    padded[:n_out, :n_in] = q
    panels = padded.view(padded.shape[0] // PANEL, PANEL, padded.shape[1] // 4, 4).permute(0, 2, 1, 3)
    return panels.contiguous(), scale.contiguous()


def column_sums(packed: torch.Tensor) -> torch.Tensor:
    """int32 [out rounded up to 16]: each column's sum of its int8 weights, from the panels. The VNNI path
    feeds the token in as x + 128 and takes 128 * this sum back off; held beside the weight (4 bytes a
    column), the kernel need not add the weights up again at every call."""
    return packed.sum(dim=(1, 3), dtype=torch.int32).reshape(-1).contiguous()


def int8_linear(
    kernel,
    x: torch.Tensor,
    packed: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    col_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """x [..., in] float32 -> [..., out] float32, x quantized per token inside the kernel; col_sums from
    column_sums(packed), or None to have the kernel sum the weights itself."""
    n_out = scale.shape[0]
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    status = kernel(out, rows, packed, scale, bias, torch.get_num_threads(), col_sums)
    if status != 0:
        raise MemoryError("the native int8 linear could not allocate its scratch memory")
    return out.view(*x.shape[:-1], n_out)


def int8_rows_linear(kernel, x: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x [..., in] float32 -> [..., out] float32 against int8 rows [out, in] (weight-only: x stays float)."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(flat.shape[0], rows.shape[0], dtype=torch.float32)
    status = kernel(out, flat, rows, scale, torch.get_num_threads())
    if status != 0:
        raise MemoryError("the native int8 head could not allocate its scratch memory")
    return out.view(*x.shape[:-1], rows.shape[0])
