"""CUDA backend flags (TF32, cuDNN benchmark), in force only while this engine runs a step.

The flags are process-wide torch settings. Set once at engine start, the last engine started would decide
for every engine in the process: `quality compare`'s float32 reference would run in TF32 once the
candidate asked for it, while its runtime_info said otherwise. So ModelRunner runs each step inside
`backend_scope`, which sets what this engine asked for and puts back what was there.

Mixed precision (bf16/fp16) runs weights and activations in that dtype, with float32 where it
matters: RMSNorm statistics (layers/norm.py), the attention softmax (SDPA accumulates in float32 for
bf16/fp16 inputs), and the logits the sampler sees (layers/linear.py's Float32Logits).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from medvllm.config import Config

# torch >= 2.9 spells TF32 as fp32_precision; the old allow_tf32 flags then warn
_PRECISION_API = hasattr(torch.backends.cuda.matmul, "fp32_precision")


def engine_flags(config: Config, device: torch.device) -> dict:
    """What this engine's steps run under: on CUDA, TF32 and cuDNN benchmark exactly as the Config says;
    on CPU nothing (None): the flags mean nothing there, and a CPU engine leaves them alone."""
    if device.type != "cuda":
        return {"allow_tf32": None, "cudnn_benchmark": None}
    return {"allow_tf32": bool(config.allow_tf32), "cudnn_benchmark": bool(config.cudnn_benchmark)}


apply_backend_flags = engine_flags  # the older name, still imported by callers outside the engine


def current_flags() -> dict:
    """The torch flags as they are now, in a form `_set` puts back exactly."""
    if _PRECISION_API:
        matmul, conv = torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.conv.fp32_precision
    else:
        matmul, conv = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    return {"matmul": matmul, "conv": conv, "benchmark": torch.backends.cudnn.benchmark}


def _set(flags: dict) -> None:
    if _PRECISION_API:
        torch.backends.cuda.matmul.fp32_precision = flags["matmul"]
        torch.backends.cudnn.conv.fp32_precision = flags["conv"]
    else:
        torch.backends.cuda.matmul.allow_tf32 = flags["matmul"]
        torch.backends.cudnn.allow_tf32 = flags["conv"]
    torch.backends.cudnn.benchmark = flags["benchmark"]


def _wanted(flags: dict) -> dict:
    tf32 = flags["allow_tf32"]
    precision = ("tf32" if tf32 else "ieee") if _PRECISION_API else tf32
    return {"matmul": precision, "conv": precision, "benchmark": flags["cudnn_benchmark"]}


@contextmanager
def backend_scope(flags: dict) -> Iterator[None]:
    """Run the block under `flags` (engine_flags' form), then restore the previous torch flags, also when
    the block raises. Flags that are None are not touched."""
    if flags["allow_tf32"] is None and flags["cudnn_benchmark"] is None:
        yield
        return
    saved = current_flags()
    _set(_wanted(flags))
    try:
        yield
    finally:
        _set(saved)
