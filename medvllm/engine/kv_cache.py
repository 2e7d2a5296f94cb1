"""The paged KV pool: one tensor, sized once at start, split into per-layer block views."""

from __future__ import annotations

import math
import mmap

import torch

from medvllm.config import Config
from medvllm.errors import ConfigError

GIB = 1 << 30


def bytes_per_block(model, block_size: int, dtype: torch.dtype) -> int:
    attn = model.model.layers[0].self_attn
    per_token = 2 * attn.num_kv_heads * attn.head_dim * torch.finfo(dtype).bits // 8
    return per_token * block_size * len(model.model.layers)


def num_blocks_for(config: Config, model, dtype: torch.dtype, device: torch.device, max_model_len: int) -> int:
    if config.num_kvcache_blocks is not None:
        return config.num_kvcache_blocks
    per_block = bytes_per_block(model, config.kvcache_block_size, dtype)
    if device.type == "cuda":
        from medvllm.engine.cuda_memory import measured_budget

        return int(measured_budget(model, config, max_model_len, dtype, device) // per_block)
    blocks = int(config.kv_cache_space_gib * GIB // per_block)
    if config.enable_memory_pooling:
        # a pool committed at start holds no more than max_num_seqs requests of max_model_len can fill
        blocks = min(blocks, config.max_num_seqs * -(-max_model_len // config.kvcache_block_size))
    return blocks


def allocate_kv_cache(
    model, config: Config, dtype: torch.dtype, device: torch.device, max_model_len: int, tp=None
) -> torch.Tensor:
    """[2, layers, blocks, block_size, kv_heads, head_dim]; the model binds each layer's slices."""
    blocks = num_blocks_for(config, model, dtype, device, max_model_len)
    if tp is not None:
        # rank 0's scheduler hands out block ids that every rank uses in its own pool, and ranks may
        # differ in KV heads (uneven splits) or free memory: all hold the smallest pool any rank can
        blocks = tp.min_over_ranks(blocks)
    needed = -(-max_model_len // config.kvcache_block_size)
    if blocks < needed and (config.max_model_len is not None or blocks < 1):
        raise ConfigError(
            f"the KV cache holds {blocks} blocks of {config.kvcache_block_size} tokens, fewer than the "
            f"{needed} one request of max_model_len={max_model_len} needs: raise kv_cache_space_gib "
            "(CPU) / gpu_memory_utilization (CUDA) or num_kvcache_blocks, or lower max_model_len"
        )
    attn0 = model.model.layers[0].self_attn
    layers = len(model.model.layers)
    shape = (2, layers, blocks, config.kvcache_block_size, attn0.num_kv_heads, attn0.head_dim)
    if config.enable_memory_pooling:
        from medvllm.engine.memory_pool import allocate_pool, pool_device

        cache = allocate_pool(shape, dtype, pool_device(config, device))
    else:
        cache = zeroed(shape, dtype, device)
    return cache


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
