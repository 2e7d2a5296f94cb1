"""Matmul on a GGUF file's quantized weight blocks, kept as the file holds them (native/gguf_*.c).

A weight is N rows of K inputs, each row K / block_size blocks back to back as in the file: uint8
[N, row_bytes(qtype, K)]. Activations are quantized per 32 inputs to int8 (parts=1) or to two int8 parts
(parts=2, ~15 bits); quantize them once with `quantize_activations` to run several weights (q, k, v) into
column ranges of one output with `matmul_quantized`, or call `gguf_linear` for one weight. No bias: the
caller adds it.
"""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding

# ggml type ids (gguf.GGMLQuantizationType): Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K
SUPPORTED = frozenset(binding.GGUF_BLOCKS)
GROUP = 16  # tokens the kernels run side by side over weight rows unpacked once (GGUF_GROUP, gguf_act.c)


def _threads() -> int:
    return torch.get_num_threads()


def row_bytes(qtype: int, K: int) -> int:
    """Bytes of one row of K weights of GGML type qtype; ValueError for another type or K off its block."""
    return binding.gguf_row_bytes(qtype, K)


def _rows(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() == 0:
        raise TypeError(f"x: expected a float32 tensor [..., K], got {getattr(x, 'shape', type(x).__name__)}")
    if x.shape[-1] % 32:
        raise ValueError(f"x: {x.shape[-1]} inputs is not a multiple of 32 (the activation block); pad K to 32")
    return x.reshape(-1, x.shape[-1])


def quantize_activations(x: torch.Tensor, parts: int = 1) -> torch.Tensor:
    """x float32 [M, K] -> the kernels' uint8 activation buffer (one layout per M, K)."""
    binding.library()
    x2 = _rows(x)
    qx = torch.empty(binding.gguf_act_bytes(x2.shape[0], x2.shape[1], parts), dtype=torch.uint8)
    binding.gguf_quantize_act(qx, x2, parts, _threads())
    return qx


def matmul_quantized(
    qx: torch.Tensor,
    M: int,
    K: int,
    blocks: torch.Tensor,
    qtype: int,
    parts: int,
    out: torch.Tensor,
    col: int = 0,
) -> torch.Tensor:
    """out[:, col:col + N] = x @ W.T for x given as qx (quantize_activations of M x K, the same parts);
    out float32 [M, ldo] with ldo >= col + N; the other columns are left as they are. Returns out."""
    if binding.gguf_matmul_q(out, col, qx, M, K, blocks, qtype, parts, _threads()):
        raise MemoryError("gguf_matmul_q: no memory for the kernel's scratch rows; free memory or lower the batch")
    return out


def gguf_linear(
    x: torch.Tensor, blocks: torch.Tensor, qtype: int, parts: int = 1, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x float32 [..., K] @ W.T -> float32 [..., N], W as uint8 blocks [N, row_bytes(qtype, K)]."""
    binding.library()
    x2 = _rows(x)
    n_out = blocks.shape[0] if isinstance(blocks, torch.Tensor) and blocks.dim() == 2 else 0
    if out is None:
        out = torch.empty(x2.shape[0], n_out, dtype=torch.float32)
    if binding.gguf_linear(out, 0, x2, blocks, qtype, parts, _threads()):
        raise MemoryError("gguf_linear: no memory for the activations or scratch rows; free memory or lower the batch")
    return out.view(*x.shape[:-1], n_out)


def dequantize_rows(blocks: torch.Tensor, qtype: int, K: int, row_ids: torch.Tensor) -> torch.Tensor:
    """float32 [len(row_ids), K]: those rows of the weight, bit-identical to gguf.quants.dequantize."""
    binding.library()
    ids = row_ids.reshape(-1).to(torch.int64).contiguous()
    out = torch.empty(ids.shape[0], K, dtype=torch.float32)
    binding.gguf_dequantize_rows(out, blocks, qtype, K, ids, _threads())
    return out.view(*row_ids.shape, K)
