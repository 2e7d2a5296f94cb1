"""Memory pooling (`enable_memory_pooling`): the KV cache is one allocation made and committed at start.

Without pooling, the CPU KV cache is calloc'd zero pages that the OS maps in as blocks are first
written, and the block manager reuses freed blocks before untouched ones, so resident memory grows to
the peak the requests needed at once. With pooling, every page of the pool is written at start, on the
pool device (on CPU the pool is capped at what max_num_seqs requests of max_model_len can fill): what
the engine holds is known (and fails, if it must, at start), and the steady state maps in nothing new:
tests/test_memory_pool.py shows RSS flat over 1,000 decode steps.
The per-step activations come back from the allocators: the caching allocator on CUDA, and on CPU
glibc's heap once `keep_freed_memory` has told it to keep large blocks (see there); the same test
measures it.
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_BYTES = 1 << 30


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks up to 1 GiB in its heap for reuse instead of unmapping them.

    By default every allocation over 32 MiB (a prefill's activations: 7,000 tokens x 3,072 floats is
    86 MB) is a fresh mmap, so each step page-faults its work buffers in again and zeroes them. Kept
    in the heap they are reused: the default model's 64-prompt prefill went from 21 s to 15.5 s on 2
    cores. Peak memory is unchanged (it is the same buffers); the heap just does not shrink between
    steps. Process-wide, like any allocator setting; returns False off glibc.
    """
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, _KEEP_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, _KEEP_BYTES))
