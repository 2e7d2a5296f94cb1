"""Symmetric int8 rows: one float32 scale per row, so row i is q[i] * scale[i] within half a step. The
int8 token embedding and the int8 LM head hold their table this way. int8_groups gives each group of
inputs of a row its own scale (the dynamic int8 weights)."""

from __future__ import annotations

import torch

QMAX = 127
_TINY = 1e-12


def int8_rows(weight: torch.Tensor, rows_at_once: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """float [n, d] -> (int8 [n, d], float32 scale [n]): symmetric, one scale per row, so row i is
    q[i] * scale[i] within half a step. Converted a slice of rows at a time: no float temporary the size
    of the whole matrix (the embedding table, a small model's largest tensor, made the load's peak that way)."""
    scale = torch.empty(weight.shape[0], dtype=torch.float32, device=weight.device)
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    for start in range(0, weight.shape[0], rows_at_once):
        rows = slice(start, start + rows_at_once)
        part = weight[rows].detach().float()
        scale[rows] = (part.abs().amax(dim=1) / QMAX).clamp(min=_TINY)
        q[rows] = torch.round(part / scale[rows, None])
    return q, scale


def int8_groups(weight: torch.Tensor, group: int, rows_at_once: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """float [n, d] -> (int8 [n, d], float32 scale [n, ceil(d / group)]): symmetric, one scale per row and
    group of `group` inputs (the last group may be shorter), so each value is within half its group's step.
    A slice of rows at a time, as int8_rows."""
    n, d = weight.shape
    groups = -(-d // group)
    scale = torch.empty(n, groups, dtype=torch.float32, device=weight.device)
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    for start in range(0, n, rows_at_once):
        rows = slice(start, start + rows_at_once)
        part = torch.nn.functional.pad(weight[rows].detach().float(), (0, groups * group - d)).view(-1, groups, group)
        scale[rows] = (part.abs().amax(dim=2) / QMAX).clamp(min=_TINY)
        q[rows] = torch.round(part / scale[rows, :, None]).view(-1, groups * group)[:, :d]
    return q, scale
