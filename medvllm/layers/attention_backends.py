"""Which attention backend a model runs with, and putting it on every attention layer.

- "sdpa": PagedAttention's own path (gather each sequence's blocks, one masked SDPA call); any device.
- "cpu-paged": on CPU, decode steps through the native kernel that reads the paged cache in place
  (layers/cpu_attention.py); prefill stays on SDPA. `auto` takes it when the kernel builds here.
- "flash-attn" / "sdpa-flash": CUDA only (layers/flash_attention.py).
"""
from __future__ import annotations

import logging

import torch

from medvllm.errors import ConfigError
from medvllm.layers.flash_attention import FlashAttnBackend, SdpaFlashBackend, flash_attn_installed

log = logging.getLogger(__name__)


def select_backend(config, device: torch.device, dtype: torch.dtype, sliding_window: bool) -> str:
    """The attention backend a Config gets on this device: "sdpa", "cpu-paged", "flash-attn" or "sdpa-flash"."""
    wants = config.attention_impl == "flash"
    if device.type != "cuda":
        if wants:
            raise ConfigError(f"flash attention needs a CUDA GPU, but the model runs on {device.type}: "
                              "set attention_impl to 'sdpa' or 'auto' and turn flash attention off")
        if device.type == "cpu" and config.attention_impl == "auto" and _native_cpu_kernel_ready():
            return "cpu-paged"
        return "sdpa"
    low_precision = dtype in (torch.float16, torch.bfloat16)
    sm = torch.cuda.get_device_capability(device)[0]
    if not wants:
        auto = config.attention_impl == "auto" and flash_attn_installed() and low_precision and sm >= 8
        return "flash-attn" if auto else "sdpa"
    if not low_precision:
        raise ConfigError(f"flash attention runs in fp16/bf16 only, but the model runs in "
                          f"{str(dtype).replace('torch.', '')}: enable mixed precision, or use attention_impl='sdpa'")
    if sm < 8:
        raise ConfigError(f"flash attention needs an Ampere or newer GPU (SM >= 8); this one is SM {sm}: "
                          "use attention_impl='sdpa'")
    if flash_attn_installed():
        return "flash-attn"
    if sliding_window:
        raise ConfigError("this model uses sliding-window attention, which PyTorch's flash kernel lacks: "
                          "pip install flash-attn, or use attention_impl='sdpa'")
    return "sdpa-flash"


def _native_cpu_kernel_ready() -> bool:
    from medvllm.layers.cpu_attention import native_kernel
    from medvllm.layers.native.build import NativeUnavailable
    try:
        native_kernel()
        return True
    except NativeUnavailable as e:  # same numerics on the SDPA path, only slower: say so once
        log.warning("native CPU paged attention unavailable (%s); decode attention runs on SDPA", e)
        return False


def install(model, backend: str) -> None:
    """Point every attention layer of `model` at the backend ("sdpa" keeps PagedAttention's own path)."""
    if backend == "cpu-paged":
        from medvllm.layers.cpu_attention import CpuPagedBackend as impl
    else:
        impl = {"sdpa": None, "flash-attn": FlashAttnBackend, "sdpa-flash": SdpaFlashBackend}[backend]
    for module in model.modules():
        if hasattr(module, "k_cache") and hasattr(module, "sliding_window"):
            module.backend = impl() if impl is not None else None
