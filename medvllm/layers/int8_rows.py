"""Symmetric int8 rows with one float32 scale per row and group of inputs, so each value is q * scale
within half its group's step. The int8 token embedding and the int8 LM head hold their shared table
this way (ROW_GROUP inputs a group); the dynamic int8 Linear weights start from int8_groups too.

A scale per group rather than per row: one large value costs precision to its own group only. On the
default model the head and table at 32 inputs a group moved top-1 agreement by about a point against
one scale per row (docs/QUALITY.md); a table stored as GGUF Q8_0 (blocks of 32) converts losslessly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

QMAX = 127
ROW_GROUP = 32  # inputs per scale of the embedding table and the LM head (a multiple of 16, the kernel's)
_TINY = 1e-12


def int8_groups(weight: torch.Tensor, group: int, rows_at_once: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """float [n, d] -> (int8 [n, d], float32 scale [n, ceil(d / group)]): symmetric, one scale per row and
    group of `group` inputs (the last group may be shorter). Converted a slice of rows at a time: no float
    temporary the size of the whole matrix (the embedding table, a small model's largest tensor, made the
    load's peak that way)."""
    n, d = weight.shape
    groups = -(-d // group)
    scale = torch.empty(n, groups, dtype=torch.float32, device=weight.device)
    q = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    for start in range(0, n, rows_at_once):
        rows = slice(start, start + rows_at_once)
        part = F.pad(weight[rows].detach().float(), (0, groups * group - d)).view(-1, groups, group)
        scale[rows] = (part.abs().amax(dim=2) / QMAX).clamp(min=_TINY)
        q[rows] = torch.round(part / scale[rows, :, None]).view(-1, groups * group)[:, :d]
    return q, scale


def int8_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedding table's and the LM head's form: int8_groups with ROW_GROUP inputs a group."""
    return int8_groups(weight, ROW_GROUP)


def dequantize(rows: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """int8 [n, d] and their scales [n, groups] (int8_rows, or one per row) -> float32 [n, d]."""
    n, d = rows.shape
    groups = scale.shape[1]
    group = d if groups == 1 else ROW_GROUP
    if -(-d // group) != groups:
        raise ValueError(f"scale: {groups} groups for rows of {d}; expected 1 or {-(-d // ROW_GROUP)} (int8_rows)")
    values = F.pad(rows.float(), (0, groups * group - d)).view(n, groups, group).mul_(scale[:, :, None])
    return values.view(n, groups * group)[:, :d]
