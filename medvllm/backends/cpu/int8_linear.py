"""The native int8 kernels on CPU: packing weights for them, and calling them.

- int8_linear.c (dynamic int8): the weight is held once, as int8 in the kernel's panel layout, with one
  float32 scale and one int16 column sum per output channel and group of inputs: 1 byte per weight plus
  6 per group of a row (19% more at 32 inputs a group).
- int8_rows_matmul.c (weight-only): plain int8 rows with a scale per row and group of inputs, float
  activations; the LM head uses it, sharing its rows with the token embedding (int8_rows_amx.c where the
  CPU has AMX and the rows have one scale each).
"""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.layers.int8_rows import int8_groups, int8_rows  # noqa: F401 (int8_rows: the head's form)

PANEL = 16  # output columns per packed panel (PANEL in int8_linear.c)


def native_int8_kernel():
    """The loaded kernel, or raises NativeUnavailable with the reason."""
    binding.library()
    return binding.int8_linear


def native_rows_kernel():
    """The loaded weight-only kernel, or raises NativeUnavailable with the reason."""
    binding.library()
    return binding.int8_rows_matmul


def rows_kernel_uses_amx(width: int, group: int) -> bool:
    """Whether the weight-only kernel runs on AMX tiles for rows of this width and scale group
    (int8_rows_amx.c, one scale per row: activations as two int8 parts, ~16 bits) rather than with
    float32 activations."""
    binding.library()
    return binding.int8_rows_uses_amx(width, group)


def pack_int8(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float [out, in] -> int8 panels [out/16, in/4, 16, 4], float32 scales and int16 column sums
    [out/16, groups, 16]; symmetric per row and group of `group` inputs (a multiple of 4 up to 256, so
    that a sum, at most 127 * group, fits int16).

    The column sums (each column's sum of its int8 weights over a group) are the VNNI path's correction:
    it feeds the token in as x + 128 and takes 128 * this sum back off."""
    n_out, n_in = weight.shape
    q, scale = int8_groups(weight, group)
    groups = scale.shape[1]
    n_pad, k_pad = -(-n_out // PANEL) * PANEL, -(-n_in // 4) * 4
    padded = torch.zeros(n_pad, groups * group, dtype=torch.int8)
    padded[:n_out, :n_in] = q
    panels = padded[:, :k_pad].reshape(n_pad // PANEL, PANEL, k_pad // 4, 4).permute(0, 2, 1, 3).contiguous()
    scales = torch.zeros(n_pad, groups, dtype=torch.float32)
    scales[:n_out] = scale
    sums = padded.view(n_pad, groups, group).sum(dim=2, dtype=torch.int32).to(torch.int16)
    return panels, _per_panel(scales), _per_panel(sums)


def _per_panel(t: torch.Tensor) -> torch.Tensor:
    """[out padded to 16, groups] -> [out/16, groups, 16]: a panel's 16 values of a group side by side."""
    return t.view(-1, PANEL, t.shape[1]).permute(0, 2, 1).contiguous()


def int8_linear(
    kernel,
    x: torch.Tensor,
    panels: torch.Tensor,
    scale: torch.Tensor,
    col_sums: torch.Tensor,
    group: int,
    n_out: int,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """x [..., in] float32 -> [..., n_out] float32, x quantized per token and group of `group` inputs
    inside the kernel; panels, scale, col_sums from pack_int8."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(rows.shape[0], n_out, dtype=torch.float32)
    status = kernel(out, rows, panels, scale, col_sums, bias, group, torch.get_num_threads())
    if status != 0:
        raise MemoryError("the native int8 linear could not allocate its scratch memory")
    return out.view(*x.shape[:-1], n_out)


def int8_rows_linear(kernel, x: torch.Tensor, rows: torch.Tensor, scale: torch.Tensor, group: int) -> torch.Tensor:
    """x [..., in] float32 -> [..., out] float32 against int8 rows [out, in] with scales [out, groups] of
    `group` inputs (weight-only: x stays float)."""
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    out = torch.empty(flat.shape[0], rows.shape[0], dtype=torch.float32)
    status = kernel(out, flat, rows, scale, group, torch.get_num_threads())
    if status != 0:
        raise MemoryError("the native int8 head could not allocate its scratch memory")
    return out.view(*x.shape[:-1], rows.shape[0])
