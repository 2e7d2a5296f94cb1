"""The paged KV pool: one tensor, sized once at start, split into per-layer block views.

A model that interleaves sliding-window and full-attention layers (Gemma 2 and 3) gets two: one for the
full-attention layers, and a smaller one for the sliding-window layers, which hold only each request's
window (engine/window_blocks.py). The window pool is sized for every request's window plus a step's
prompt tokens; the rest of the budget goes to the full-attention layers.
"""

from __future__ import annotations

import math
import mmap
from dataclasses import dataclass

import torch

from medvllm.config import Config
from medvllm.errors import ConfigError

GIB = 1 << 30


@dataclass
class KVGroups:
    """Which layers keep their KV in which pool."""

    full: list[int]  # layer indices in the main pool
    windowed: list[int]  # sliding-window layers with a pool of their own (empty: one pool for all)
    window: int | None  # their window, in tokens


def kv_groups(model) -> KVGroups:
    """A pool of its own for the sliding-window layers where full-attention layers sit beside them (a
    model where every layer has the same window keeps one pool)."""
    windows = [layer.self_attn.attn.sliding_window for layer in model.model.layers]
    sliding = {w for w in windows if w is not None}
    if len(sliding) != 1 or None not in windows:
        return KVGroups(list(range(len(windows))), [], None)
    window = sliding.pop()
    return KVGroups(
        [i for i, w in enumerate(windows) if w is None], [i for i, w in enumerate(windows) if w is not None], window
    )


def layer_block_bytes(model, block_size: int, dtype: torch.dtype) -> int:
    """One layer's K and V for one block."""
    attn = model.model.layers[0].self_attn
    return 2 * attn.num_kv_heads * attn.head_dim * torch.finfo(dtype).bits // 8 * block_size


def window_pool_bound(config: Config, window: int) -> int:
    """Blocks the window pool can ever hold at once: every request's window (plus the block it straddles
    and the one it grows into) and a step's prompt tokens, and the null block."""
    size = config.kvcache_block_size
    per_request = -(-(window - 1) // size) + 2
    return config.max_num_seqs * per_request + -(-config.max_num_batched_tokens // size) + 1


def pool_sizes(
    config: Config, model, groups: KVGroups, dtype: torch.dtype, device: torch.device, max_model_len: int
) -> tuple[int, int]:
    """(blocks of the main pool, blocks of the window pool; 0 without one)."""
    size = config.kvcache_block_size
    per_layer = layer_block_bytes(model, size, dtype)
    full, windowed = len(groups.full), len(groups.windowed)
    bound = window_pool_bound(config, groups.window) if windowed else 0
    if config.num_kvcache_blocks is not None:
        blocks = config.num_kvcache_blocks
        return blocks, min(blocks + 1, bound) if windowed else 0
    if device.type == "cuda":
        from medvllm.engine.cuda_memory import measured_budget

        budget = measured_budget(model, config, max_model_len, dtype, device)
    else:
        budget = config.kv_cache_space_gib * GIB
    layer_blocks = int(budget // per_layer)
    blocks = layer_blocks // (full + windowed)
    window_blocks = 0
    if windowed:
        # the window pool never needs more than its bound: the budget it would take goes to the main pool
        window_blocks = min(blocks + 1, bound)
        blocks = (layer_blocks - window_blocks * windowed) // full
    if config.enable_memory_pooling and device.type != "cuda":
        # a pool committed at start holds no more than max_num_seqs requests of max_model_len can fill
        blocks = min(blocks, config.max_num_seqs * -(-max_model_len // size))
    return blocks, window_blocks


def allocate_kv_cache(
    model, config: Config, dtype: torch.dtype, device: torch.device, max_model_len: int, tp=None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The main pool [2, layers, blocks, block_size, kv_heads, head_dim] and, for a model with sliding-window
    and full-attention layers, the window pool [2, windowed layers, window blocks, ...] (else None); the model
    binds each layer's slices."""
    groups = kv_groups(model)
    blocks, window_blocks = pool_sizes(config, model, groups, dtype, device, max_model_len)
    if tp is not None:
        # rank 0's scheduler hands out block ids that every rank uses in its own pool, and ranks may
        # differ in KV heads (uneven splits) or free memory: all hold the smallest pool any rank can
        blocks = tp.min_over_ranks(blocks)
        window_blocks = tp.min_over_ranks(window_blocks)
    needed = -(-max_model_len // config.kvcache_block_size)
    if blocks < needed and (config.max_model_len is not None or blocks < 1):
        raise ConfigError(
            f"the KV cache holds {blocks} blocks of {config.kvcache_block_size} tokens, fewer than the "
            f"{needed} one request of max_model_len={max_model_len} needs: raise kv_cache_space_gib "
            "(CPU) / gpu_memory_utilization (CUDA) or num_kvcache_blocks, or lower max_model_len"
        )
    cache = _pool(config, model, len(groups.full), blocks, dtype, device)
    if not groups.windowed:
        return cache, None
    return cache, _pool(config, model, len(groups.windowed), window_blocks, dtype, device)


def _pool(config: Config, model, layers: int, blocks: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    attn0 = model.model.layers[0].self_attn
    shape = (2, layers, blocks, config.kvcache_block_size, attn0.num_kv_heads, attn0.head_dim)
    if config.enable_memory_pooling:
        from medvllm.engine.memory_pool import allocate_pool, pool_device

        # the window pool's block 0 stands for dropped blocks: zero, as the pooled memory starts
        return allocate_pool(shape, dtype, pool_device(config, device))
    return zeroed(shape, dtype, device)


def fitted_max_model_len(config: Config, cache: torch.Tensor, max_model_len: int) -> int:
    """An automatic max_model_len (the model's context) lowered to what the pool holds, with a note;
    an explicit one that does not fit was refused above."""
    capacity = cache.shape[2] * config.kvcache_block_size
    if capacity >= max_model_len:
        return max_model_len
    import warnings

    from medvllm.config import ConfigWarning

    warnings.warn(
        f"max_model_len lowered from the model's {max_model_len} to {capacity} tokens, what the KV cache "
        "holds: raise kv_cache_space_gib (CPU) / gpu_memory_utilization (CUDA) for longer requests",
        ConfigWarning,
        stacklevel=2,
    )
    return capacity


def zeroed(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled tensor. Zeros matter: masked-out slots still meet the values in P @ V, and
    garbage NaNs there would poison the output. On CPU, an anonymous mapping gets zero pages from the OS
    lazily, so resident memory grows only with the blocks actually written. (Not numpy's calloc, which
    asks Linux for 2 MB pages: their first touch costs several times as much per byte as 4 KB pages',
    which slows a fresh engine's first run; later runs were no faster with them.)"""
    if device.type != "cpu":
        return torch.zeros(shape, dtype=dtype, device=device)
    nbytes = math.prod(shape) * torch.finfo(dtype).bits // 8
    memory = mmap.mmap(-1, max(nbytes, 1))  # the tensor keeps the mapping alive
    return torch.frombuffer(memory, dtype=torch.uint8, count=nbytes).view(dtype).view(shape)
