"""Memory pooling (`enable_memory_pooling`): the KV cache is one allocation made and committed at start.

Without pooling, the CPU KV cache is calloc'd zero pages that the OS maps in as blocks are first
written, so resident memory grows through a run. With pooling, every page of the pool is written at
start, on the pool device: what the engine holds is known (and fails, if it must, at start), and the
steady state maps in nothing new: tests/test_memory_pool.py shows RSS flat over 1,000 decode steps.
The per-step activations are not pooled: PyTorch's allocators (glibc arenas on CPU, the caching
allocator on CUDA) hand the same memory back each step, which the same test measures.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math

import torch

from medvllm.config import Config
from medvllm.errors import ConfigError


def pool_device(config: Config, model_device: torch.device) -> torch.device:
    """The pool lives where the model runs: attention reads the cache on the model's device every step."""
    if config.pool_device in ("auto", model_device.type):
        return model_device
    raise ConfigError(f"pool_device={config.pool_device!r} but the model runs on {model_device.type}: the paged KV "
                      f"cache must sit on the model's device; set pool_device to 'auto' or {model_device.type!r}")


def allocate_pool(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled tensor whose every page is resident now (torch.zeros writes each byte)."""
    try:
        return torch.zeros(shape, dtype=dtype, device=device)
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
        gib = math.prod(shape) * torch.finfo(dtype).bits / 8 / 2**30
        raise ConfigError(f"the memory pool ({gib:.2f} GiB on {device}) cannot be allocated ({type(e).__name__}): "
                          "lower kv_cache_space_gib (CPU) / gpu_memory_utilization (CUDA) or num_kvcache_blocks")


def release_free_memory() -> bool:
    """Hand memory that is free inside the C heap back to the OS (glibc's malloc_trim).

    Loading frees each float tensor once it is copied or quantized, but glibc keeps freed blocks below
    its mmap threshold for reuse, so without this they stay resident. Returns False off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError, TypeError):
        return False
    trim(0)
    return True
