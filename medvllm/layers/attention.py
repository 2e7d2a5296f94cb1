"""Attention over the paged KV cache.

Each step, a layer writes the new tokens' K/V into their cache slots, then every query attends to its
sequence's whole context read back from the cache through the block table. Prefill, prefix-cache hits
and decode are one code path: a query at position p sees keys 0..p of its own sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class AttentionMetadata:
    """Built once per step by the model runner; shared by every layer."""

    slot_mapping: torch.Tensor  # [T] cache slot of each new token
    block_tables: torch.Tensor  # [B, max_blocks] (padding points at block 0; masked out)
    flat_block_tables: torch.Tensor  # block_tables.flatten(), made once for every layer
    context_lens: torch.Tensor  # [B] tokens in context after this step
    # decode steps have one query per sequence; otherwise queries are padded to [B, max_q]
    is_decode: bool
    pad_index: torch.Tensor | None = None  # [B, max_q] index into the flat token dim (T = padding row)
    unpad_index: torch.Tensor | None = None  # [T] index into the flattened [B * max_q]
    masks: dict | None = None  # sliding window -> [B, 1, Q, L] bool mask, built by the first layer
    query_positions: torch.Tensor | None = None  # [B, Q] absolute position of each (padded) query
    # what an attention backend derives from this step once and every layer reuses (e.g. host-side
    # lengths, the native kernel's token rows), keyed by the backend
    backend_state: dict = field(default_factory=dict)
    # the sliding-window layers' view of the step where they keep a KV pool of their own
    # (engine/window_blocks.py): their slots and block tables, the same queries
    window: AttentionMetadata | None = None


def build_mask(meta: AttentionMetadata, num_keys: int, sliding_window: int | None) -> torch.Tensor:
    """[B, 1, Q, L] bool: causal within the sequence, limited to its context, optional sliding window."""
    key_pos = torch.arange(num_keys, device=meta.context_lens.device)
    q_pos = meta.query_positions.unsqueeze(-1)  # [B, Q, 1]
    mask = key_pos <= q_pos
    if sliding_window is not None:
        mask &= key_pos > q_pos - sliding_window
    return mask.unsqueeze(1)


def bind_layer_caches(layers, cache: torch.Tensor, window_cache: torch.Tensor | None = None) -> None:
    """Each attention layer's views of the KV pools [2, layers, blocks, block_size, Hkv, D]: in order from
    the main pool, or, given a window pool, the sliding-window layers in order from that one."""
    taken = {False: 0, True: 0}
    for layer in layers:
        attn = layer.self_attn.attn
        windowed = window_cache is not None and attn.sliding_window is not None
        pool, i = (window_cache if windowed else cache), taken[windowed]
        attn.bind_cache(pool[0, i], pool[1, i])
        taken[windowed] += 1


def gather_blocks(cache: torch.Tensor, flat_tables: torch.Tensor) -> torch.Tensor:
    """Each sequence's blocks, in order, as one contiguous tensor.

    index_select over whole blocks is one memcpy per block, much faster than advanced indexing
    (cache[tables]) on the same data.
    """
    return cache.view(cache.shape[0], -1).index_select(0, flat_tables)


class PagedAttention(nn.Module):
    """`backend`: how queries attend once the step's K/V are in the cache, chosen once per engine
    (medvllm/backends/select.py): None is this class's SDPA path (any device); otherwise an object
    called as backend(layer, q, meta) -> [T, H * D] (the CPU paged kernel, flash attention)."""

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        scale: float,
        sliding_window: int | None = None,
        backend=None,
        softcap: float | None = None,
    ):
        """`softcap`: scores become softcap * tanh(scores / softcap) (Gemma 2); only this class's PyTorch
        path applies it, so the backend choice gives such a model no other backend."""
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.scale = scale
        self.sliding_window = sliding_window
        self.k_cache: torch.Tensor | None = None  # [num_blocks, block_size, Hkv, D], from bind_cache
        self.v_cache: torch.Tensor | None = None
        self.backend = backend
        self.softcap = softcap

    def bind_cache(self, k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """This layer's views of the engine's KV pool, given once the pool is allocated."""
        self.k_cache, self.v_cache = k_cache, v_cache

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata):
        """q: [T, H, D], k/v: [T, Hkv, D] for the new tokens. Returns [T, H * D]."""
        if self.sliding_window is not None and meta.window is not None:
            meta = meta.window
        k_flat = self.k_cache.view(-1, self.num_kv_heads, self.head_dim)
        v_flat = self.v_cache.view(-1, self.num_kv_heads, self.head_dim)
        # kv_cache_dtype may store the cache narrower than the model computes (bf16 under float32)
        k_flat.index_copy_(0, meta.slot_mapping, k.to(k_flat.dtype))
        v_flat.index_copy_(0, meta.slot_mapping, v.to(v_flat.dtype))
        if self.backend is not None:
            return self.backend(self, q, meta)
        return self.sdpa(q, meta)

    def sdpa(self, q: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """Each sequence's blocks gathered into one padded tensor, then one masked SDPA call."""
        batch, max_blocks = meta.block_tables.shape
        num_keys = max_blocks * self.k_cache.shape[1]
        keys = gather_blocks(self.k_cache, meta.flat_block_tables).view(
            batch, num_keys, self.num_kv_heads, self.head_dim
        )
        values = gather_blocks(self.v_cache, meta.flat_block_tables).view(
            batch, num_keys, self.num_kv_heads, self.head_dim
        )
        if keys.dtype != q.dtype:  # a narrower kv_cache_dtype: attend in the model's dtype
            keys, values = keys.to(q.dtype), values.to(q.dtype)
        mask = self._mask(meta, num_keys)

        if meta.is_decode:
            queries = q.unsqueeze(1)  # [B, 1, H, D]
        else:
            padded = torch.cat([q, q.new_zeros(1, *q.shape[1:])])
            queries = padded[meta.pad_index]  # [B, Q, H, D]
        attend = F.scaled_dot_product_attention if self.softcap is None else self._capped
        out = attend(
            queries.transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            attn_mask=mask,
            scale=self.scale,
            enable_gqa=self.num_heads != self.num_kv_heads,
        )
        out = out.transpose(1, 2)  # [B, Q, H, D]
        if meta.is_decode:
            return out.reshape(batch, self.num_heads * self.head_dim)
        return out.reshape(-1, self.num_heads * self.head_dim)[meta.unpad_index]

    def _capped(self, q, k, v, attn_mask, scale, enable_gqa):
        """SDPA's arithmetic spelled out, with the cap between the scaled scores and the mask (SDPA has no
        hook there), as transformers' eager attention does it."""
        if enable_gqa:
            groups = self.num_heads // self.num_kv_heads
            k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
        scores = torch.matmul(q, k.transpose(2, 3)) * scale
        scores = torch.tanh(scores / self.softcap) * self.softcap
        scores = scores.masked_fill(~attn_mask, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(weights, v)

    def _mask(self, meta: AttentionMetadata, num_keys: int) -> torch.Tensor:
        # one mask per distinct window, built by the first layer that needs it and reused by the rest
        if meta.masks is None:
            meta.masks = {}
        cache = meta.masks
        key = self.sliding_window
        if key not in cache:
            cache[key] = build_mask(meta, num_keys, self.sliding_window)
        return cache[key]
