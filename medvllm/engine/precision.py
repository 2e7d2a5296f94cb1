"""CUDA backend flags set once at engine start (TF32, cuDNN benchmark).

Mixed precision (bf16/fp16) runs weights and activations in that dtype, with float32 where it
matters: RMSNorm statistics (layers/norm.py), the attention softmax (SDPA accumulates in float32 for
bf16/fp16 inputs), and the logits the sampler sees (layers/linear.py's Float32Logits).
"""

from __future__ import annotations

import torch

from medvllm.config import Config


def apply_backend_flags(config: Config, device: torch.device) -> dict:
    """Set TF32 and cuDNN benchmark on CUDA exactly as the Config says; returns what is now in force.

    These are process-wide torch settings: they are set here, at engine start, and left as set.
    On CPU they mean nothing and are not touched (reported as None).
    """
    if device.type != "cuda":
        return {"allow_tf32": None, "cudnn_benchmark": None}
    precision = "tf32" if config.allow_tf32 else "ieee"
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; the old flags then warn
        torch.backends.cuda.matmul.fp32_precision = precision
        torch.backends.cudnn.conv.fp32_precision = precision
    else:
        torch.backends.cuda.matmul.allow_tf32 = config.allow_tf32
        torch.backends.cudnn.allow_tf32 = config.allow_tf32
    torch.backends.cudnn.benchmark = config.cudnn_benchmark
    return backend_flags()


def backend_flags() -> dict:
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        tf32 = torch.backends.cuda.matmul.fp32_precision == "tf32"
    else:
        tf32 = torch.backends.cuda.matmul.allow_tf32
    return {"allow_tf32": tf32, "cudnn_benchmark": torch.backends.cudnn.benchmark}
