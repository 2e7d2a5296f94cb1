"""Flash attention on CUDA: the flash-attn package's kernels when installed, else PyTorch SDPA held to
its flash kernel. Never on CPU: the Config refuses it there.

A backend is called by PagedAttention after the step's K/V are in the cache, with the flat queries
[T, H, D], and returns [T, H * D]. Both read each sequence's context straight from the paged cache:
- "flash-attn": one varlen call for the whole batch (causal = bottom-right aligned, so prefix-cache
  hits and decode are the same call). With blocks of a multiple of 256 tokens (the kernel's page size
  rule) it reads the paged cache itself; otherwise each sequence's blocks are gathered first.
- "sdpa-flash": one SDPA call per sequence under `sdpa_kernel(FLASH_ATTENTION)` with a lower-right
  causal bias; it has no sliding window, so sliding-window models are refused.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F

from medvllm.errors import ConfigError

FLASH_ATTN_PAGE = 256  # flash-attn's paged kernels need block sizes divisible by this


def flash_attn_installed() -> bool:
    try:
        return importlib.util.find_spec("flash_attn") is not None
    except (ImportError, ValueError):
        return False


def _lengths(q: torch.Tensor, meta) -> tuple[list[int], list[int]]:
    """(query tokens, context tokens) per sequence, as Python ints; computed once per step."""
    cached = meta.backend_state.get("host_lengths")
    if cached is None:
        if meta.is_decode:
            q_lens = [1] * meta.context_lens.shape[0]
        else:
            q_lens = (meta.pad_index != q.shape[0]).sum(dim=1).tolist()
        cached = meta.backend_state["host_lengths"] = (q_lens, meta.context_lens.tolist())
    return cached


def _cu(lengths: list[int], device) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.int32, device=device).cumsum(0, dtype=torch.int32)


class FlashAttnBackend:
    name = "flash-attn"

    def __init__(self):
        from flash_attn import flash_attn_varlen_func

        self.varlen = flash_attn_varlen_func

    def __call__(self, attn, q: torch.Tensor, meta) -> torch.Tensor:
        q_lens, ctx_lens = _lengths(q, meta)
        block_size = attn.k_cache.shape[1]
        window = (-1, -1) if attn.sliding_window is None else (attn.sliding_window - 1, 0)
        common = dict(
            cu_seqlens_q=_cu(q_lens, q.device),
            cu_seqlens_k=_cu(ctx_lens, q.device),
            max_seqlen_q=max(q_lens),
            max_seqlen_k=max(ctx_lens),
            softmax_scale=attn.scale,
            causal=True,
            window_size=window,
        )
        if block_size % FLASH_ATTN_PAGE == 0:
            out = self.varlen(q, attn.k_cache, attn.v_cache, block_table=meta.block_tables.to(torch.int32), **common)
        else:
            keys, values = gather_context(attn, meta, ctx_lens)
            out = self.varlen(q, keys, values, **common)
        return out.reshape(q.shape[0], -1)


def gather_context(attn, meta, ctx_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each sequence's K and V read from its blocks, packed one after another: [sum(ctx), Hkv, D]."""
    block_size = attn.k_cache.shape[1]
    keys, values = [], []
    for row, n in enumerate(ctx_lens):
        table = meta.block_tables[row, : -(-n // block_size)]
        keys.append(attn.k_cache.index_select(0, table).flatten(0, 1)[:n])
        values.append(attn.v_cache.index_select(0, table).flatten(0, 1)[:n])
    return torch.cat(keys), torch.cat(values)


class SdpaFlashBackend:
    name = "sdpa-flash"

    def __init__(self, kernels=None):
        from torch.nn.attention import SDPBackend

        self.kernels = kernels or [SDPBackend.FLASH_ATTENTION]  # tests pass MATH to run this on CPU

    def __call__(self, attn, q: torch.Tensor, meta) -> torch.Tensor:
        from torch.nn.attention import sdpa_kernel
        from torch.nn.attention.bias import causal_lower_right

        if attn.sliding_window is not None:
            raise ConfigError(
                "PyTorch's flash kernel has no sliding window: pip install flash-attn, or use attention_impl='sdpa'"
            )
        q_lens, ctx_lens = _lengths(q, meta)
        keys, values = gather_context(attn, meta, ctx_lens)
        groups = attn.num_heads // attn.num_kv_heads
        outs, q_start, k_start = [], 0, 0
        with sdpa_kernel(self.kernels):
            for n_q, n_k in zip(q_lens, ctx_lens):
                qi = q[q_start : q_start + n_q].transpose(0, 1).unsqueeze(0)  # [1, H, n_q, D]
                ki, vi = (
                    t[k_start : k_start + n_k].repeat_interleave(groups, dim=1).transpose(0, 1).unsqueeze(0)
                    for t in (keys, values)
                )
                bias = causal_lower_right(n_q, n_k) if n_q > 1 else None
                out = F.scaled_dot_product_attention(qi, ki, vi, attn_mask=bias, scale=attn.scale)
                outs.append(out[0].transpose(0, 1).reshape(n_q, -1))
                q_start, k_start = q_start + n_q, k_start + n_k
        return torch.cat(outs)
