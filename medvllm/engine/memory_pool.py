"""Memory pooling (`enable_memory_pooling`): the KV cache is one allocation made and committed at start.

Without pooling, the CPU KV cache is an anonymous mapping of zero pages that the OS maps in as blocks are first
written, and the block manager reuses freed blocks before untouched ones, so resident memory grows to
the peak the requests needed at once. With pooling, every page of the pool is written at start, on the
pool device (on CPU the pool is capped at what max_num_seqs requests of max_model_len can fill): what
the engine holds is known (and fails, if it must, at start), and the steady state maps in nothing new:
tests/engine/test_memory_pool.py shows RSS flat over 1,000 decode steps.
The per-step activations come back from the allocators: the caching allocator on CUDA, and on CPU
glibc's heap (told by `keep_freed_memory` to keep blocks larger than it would by itself, where a
step's buffers are that large); the same test measures it.
"""

from __future__ import annotations

import math
import sys

import torch

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.build import NativeUnavailable
from medvllm.config import Config
from medvllm.errors import ConfigError


def pool_device(config: Config, model_device: torch.device) -> torch.device:
    """The pool lives where the model runs: attention reads the cache on the model's device every step."""
    if config.pool_device in ("auto", model_device.type):
        return model_device
    raise ConfigError(
        f"pool_device={config.pool_device!r} but the model runs on {model_device.type}: the paged KV "
        f"cache must sit on the model's device; set pool_device to 'auto' or {model_device.type!r}"
    )


def allocate_pool(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A zero-filled tensor whose every page is resident now (zero_ writes each byte); on CPU in huge
    pages where the kernel grants them."""
    try:
        pool = torch.empty(shape, dtype=dtype, device=device)
        if device.type == "cpu":
            ask_for_huge_pages(pool)
        return pool.zero_()
    except (RuntimeError, MemoryError) as e:  # torch.OutOfMemoryError is a RuntimeError
        gib = math.prod(shape) * torch.finfo(dtype).bits / 8 / 2**30
        raise ConfigError(
            f"the memory pool ({gib:.2f} GiB on {device}) cannot be allocated ({type(e).__name__}): "
            "lower kv_cache_space_gib (CPU) / gpu_memory_utilization (CUDA) or num_kvcache_blocks"
        ) from None


_MADV_HUGEPAGE = 14  # linux/mman.h
_HUGE_PAGE = 2 << 20


def ask_for_huge_pages(tensor: torch.Tensor) -> bool:
    """Ask Linux to back the tensor's untouched memory with 2 MiB pages (madvise MADV_HUGEPAGE, which
    transparent huge pages in "madvise" mode wait for). Attention reads the KV cache a block at a time
    from all over the pool; with 4 KiB pages nearly every block is a TLB miss. Returns whether the
    kernel took the advice (never off Linux, or for less than one aligned huge page)."""
    if not sys.platform.startswith("linux"):  # the advice number is Linux's own
        return False
    start = tensor.data_ptr()
    first = -(-start // _HUGE_PAGE) * _HUGE_PAGE
    length = (start + tensor.numel() * tensor.element_size() - first) // _HUGE_PAGE * _HUGE_PAGE
    if length <= 0:
        return False
    try:
        return binding.madvise(tensor, first - start, length, _MADV_HUGEPAGE) == 0
    except NativeUnavailable:
        return False


def release_free_memory() -> bool:
    """Hand memory that is free inside the C heap back to the OS (glibc's malloc_trim).

    Loading frees each float tensor once it is copied or quantized, but glibc keeps freed blocks below
    its mmap threshold for reuse, so without this they stay resident. Returns False off glibc.
    """
    try:
        binding.malloc_trim(0)
    except NativeUnavailable:
        return False
    return True


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
GLIBC_DYNAMIC_MMAP_MAX = 32 << 20  # the largest block glibc's own threshold learns to keep (64-bit)


def step_buffer_bytes(hf_config, max_num_batched_tokens: int) -> int:
    """The largest activation a step allocates: the fused gate/up projection of a full token budget."""
    width = max(2 * getattr(hf_config, "intermediate_size", 0), 3 * hf_config.hidden_size)
    return max_num_batched_tokens * width * 4


def keep_freed_memory(largest: int) -> bool:
    """Make glibc keep freed blocks up to twice `largest` bytes in its heap instead of unmapping them,
    when they exceed what glibc keeps by itself (32 MiB). Returns whether it had to (False off glibc).

    Past that size every allocation is a fresh mmap, so each step page-faults its work buffers in again
    and zeroes them, which makes a prefill in 8,192-token steps markedly slower. With 2,048-token steps
    (the CPU default; buffers under that size) glibc's own threshold already reuses them, and raising it
    only fragments the heap: a higher peak, no faster. Process-wide, like any allocator setting.
    """
    if largest <= GLIBC_DYNAMIC_MMAP_MAX:
        return False
    keep = 2 * largest
    try:
        return bool(binding.mallopt(_M_MMAP_THRESHOLD, keep)) and bool(binding.mallopt(_M_TRIM_THRESHOLD, keep))
    except NativeUnavailable:
        return False
