"""Config: the single source of engine settings.

Everything downstream reads a Config; nothing downstream reads env vars or profiles.
Building one validates it, so a bad Config never reaches the engine.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from medvllm.errors import ConfigError


@dataclass
class Config:
    model: str | None = None
    # placement and parallelism
    device: str = "auto"  # auto | cpu | cuda
    tensor_parallel_size: int = 1
    # numerics
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    enable_mixed_precision: bool = False
    mixed_precision_dtype: str = "bf16"  # bf16 | fp16
    quantization_bits: int | None = None
    quantization_method: str | None = None
    # attention and backend flags
    attention_impl: str = "auto"  # auto | sdpa | flash
    enable_flash_attention: bool = False
    allow_tf32: bool = False
    cudnn_benchmark: bool = False
    # memory
    memory_efficient: bool = False
    enable_memory_pooling: bool = False
    pool_device: str = "auto"  # auto | cpu | cuda
    # scheduler and KV cache
    max_num_seqs: int = 128
    max_num_batched_tokens: int = 8192
    max_model_len: int | None = None
    kvcache_block_size: int = 16
    kv_cache_space_gib: float = 1.0  # KV pool limit on CPU
    gpu_memory_utilization: float = 0.9  # KV pool limit on CUDA
    num_kvcache_blocks: int | None = None  # explicit pool size; overrides the two limits above
    enable_prefix_caching: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "kvcache_block_size", "tensor_parallel_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} is invalid: it must be an integer >= 1")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device={self.device!r} is invalid: use one of auto, cpu, cuda")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype={self.dtype!r} is invalid: use one of auto, float32, bfloat16, float16")

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @property
    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype weights and activations run in."""
        if self.enable_mixed_precision:
            return {"bf16": torch.bfloat16, "fp16": torch.float16}[self.mixed_precision_dtype]
        return {"auto": torch.float32, "float32": torch.float32,
                "bfloat16": torch.bfloat16, "float16": torch.float16}[self.dtype]
