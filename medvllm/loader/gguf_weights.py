"""Decode GGUF tensors into float32 torch tensors with Hugging Face layout.

The common types (F32, F16, BF16, Q8_0, Q4_0, Q4_1) are decoded with torch, much faster than
gguf's numpy code; each mirrors gguf.quants op for op, so the floats are bit-identical (tests check
this). Every other type falls back to gguf.quants.dequantize.
"""

from contextlib import contextmanager

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as Q
from gguf.quants import dequantize as gguf_dequantize

from medvllm.errors import ModelLoadError


def dequantize(raw: np.ndarray, qtype: Q, done=None) -> torch.Tensor:
    """uint8 rows (*shape[:-1], bytes per row) -> float32 tensor of the logical shape. `done(start, stop)`,
    if given, is told each range of rows (flattened) as soon as they are decoded."""
    with _one_thread():
        return _dequantize(raw, qtype, done)


@contextmanager
def _one_thread():
    # Decoding is memory-bound, so threads barely help; on a busy machine torch's pool made the decode
    # several times slower than one thread. The caller's setting is restored.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _dequantize(raw: np.ndarray, qtype: Q, done) -> torch.Tensor:
    fast = _FAST.get(qtype)
    if fast is None:
        try:
            out = torch.from_numpy(np.require(gguf_dequantize(raw, qtype), np.float32, ["C", "W"]))
            if done is not None:
                done(0, int(np.prod(raw.shape[:-1])))
            return out
        except NotImplementedError:
            raise ModelLoadError(
                f"GGUF tensor type {qtype.name} cannot be dequantized by the installed gguf package; "
                f"use a file quantized to a common type (Q4_K_M, Q8_0, F16) or upgrade gguf"
            ) from None
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    flat = raw.reshape(-1, raw.shape[-1])
    out = torch.empty(flat.shape[0], raw.shape[-1] // block_bytes * block, dtype=torch.float32)
    # a slice of rows at a time: the temporaries stay small beside the float32 result (with three
    # full-size ones, the embedding table was the load's peak)
    step = max(1, ROW_BYTES_AT_ONCE // max(1, raw.shape[-1]))
    for start in range(0, flat.shape[0], step):
        rows = torch.from_numpy(flat[start : start + step].copy())  # the map is read-only; torch wants writable memory
        out[start : start + step] = fast(rows.reshape(-1, block_bytes), block).view(rows.shape[0], -1)
        if done is not None:
            done(start, start + rows.shape[0])
    return out.reshape(*raw.shape[:-1], out.shape[-1])


ROW_BYTES_AT_ONCE = 1 << 20


def decode_rows(rows: torch.Tensor, qtype: Q) -> torch.Tensor:
    """uint8 rows [n, bytes per row] -> float32 [n, inputs], the floats dequantize() makes: a few rows at a
    time (token embeddings looked up in a table kept as blocks), in the caller's threads."""
    fast = _FAST.get(qtype)
    if fast is None:
        return torch.from_numpy(np.require(gguf_dequantize(rows.numpy(), qtype), np.float32, ["C", "W"]))
    block, block_bytes = GGML_QUANT_SIZES[qtype]
    return fast(rows.reshape(-1, block_bytes), block).reshape(rows.shape[0], -1)


def _f32(blocks, block):
    return blocks.view(torch.float32)


def _f16(blocks, block):
    return blocks.view(torch.float16).float()


def _bf16(blocks, block):
    return blocks.view(torch.bfloat16).float()


def _scale(blocks, at):  # one fp16 per block at byte `at`, as float32 (n_blocks, 1)
    return blocks[:, at : at + 2].contiguous().view(torch.float16).float()


def _nibbles(qs, block):
    # low nibbles hold elements 0..15 of the block, high nibbles 16..31 (ggml's layout)
    return torch.cat((qs & 0x0F, qs >> 4), dim=1)


# The products are taken in place (mul_, add_): the same roundings with one float temporary, not two.
def _q8_0(blocks, block):
    return blocks[:, 2:].contiguous().view(torch.int8).float().mul_(_scale(blocks, 0))


def _q4_0(blocks, block):
    q = _nibbles(blocks[:, 2:], block).to(torch.int8) - 8
    return q.float().mul_(_scale(blocks, 0))


def _q4_1(blocks, block):
    q = _nibbles(blocks[:, 4:], block).float()
    return q.mul_(_scale(blocks, 0)).add_(_scale(blocks, 2))  # two roundings, like numpy (no fused multiply-add)


_FAST = {Q.F32: _f32, Q.F16: _f16, Q.BF16: _bf16, Q.Q8_0: _q8_0, Q.Q4_0: _q4_0, Q.Q4_1: _q4_1}


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Undo llama.cpp's Q/K row permutation (convert_hf_to_gguf LlamaModel.permute), as transformers does.

    llama.cpp interleaves each head's rotary halves for its rope kernel; HF keeps them as two halves.
    """
    head_dim = w.shape[0] // n_head // 2
    return w.reshape(n_head, head_dim, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)
