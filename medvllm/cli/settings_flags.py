"""Command-line flags for every setting a profile can hold, and the overrides dict they make (only flags given).

The flags use the profile keys, so --mixed-precision, --flash-attention and --quantization-bits keep working:
the deployment layer translates them into Config fields (medvllm/deployment/translate.py).
"""

from __future__ import annotations

import argparse

from medvllm import config as C
from medvllm.deployment.translate import MIXED_PRECISION_DTYPES

# field -> flag stem for booleans (--STEM / --no-STEM)
BOOL_FLAGS = {
    "enable_mixed_precision": "mixed-precision",
    "enable_flash_attention": "flash-attention",
    "allow_tf32": "tf32",
    "cudnn_benchmark": "cudnn-benchmark",
    "enable_memory_pooling": "memory-pooling",
    "memory_efficient": "memory-efficient",
    "enable_prefix_caching": "prefix-caching",
    "force_float16": "force-float16",
}
CHOICES = {
    "device": C.DEVICES,
    "dtype": C.DTYPES,
    "mixed_precision_dtype": tuple(MIXED_PRECISION_DTYPES),
    "attention_impl": C.ATTENTION_IMPLS,
    "pool_device": C.DEVICES,
    "kv_cache_dtype": C.KV_CACHE_DTYPES,
    "quantization_method": C.QUANT_METHODS + ("none",),
    "scheduling_policy": C.SCHEDULING_POLICIES,
    "gguf_activations": C.GGUF_ACTIVATIONS,
}
INTS = ("tensor_parallel_size", "max_num_seqs", "max_num_batched_tokens", "kvcache_block_size")
OPTIONAL_INTS = ("quantization_bits", "max_model_len", "num_kvcache_blocks", "mixed_prompt_tokens")
FLOATS = ("kv_cache_space_gib", "gpu_memory_utilization")
PREFIX = "cfg_"  # namespace attributes of these flags


def int_or_none(text: str) -> int | None:
    if text.lower() in ("none", "null", "auto"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer or 'none'") from None


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("engine settings (each overrides the deployment profile)")
    s = argparse.SUPPRESS
    for field, stem in BOOL_FLAGS.items():
        group.add_argument(
            f"--{stem}", dest=PREFIX + field, action=argparse.BooleanOptionalAction, default=s, help=f"set {field}"
        )
    for field, choices in CHOICES.items():
        group.add_argument(
            f"--{field.replace('_', '-')}", dest=PREFIX + field, choices=choices, default=s, help=f"set {field}"
        )
    for field in INTS:
        group.add_argument(f"--{field.replace('_', '-')}", dest=PREFIX + field, type=int, default=s, metavar="N")
    for field in OPTIONAL_INTS:
        group.add_argument(
            f"--{field.replace('_', '-')}", dest=PREFIX + field, type=int_or_none, default=s, metavar="N|none"
        )
    for field in FLOATS:
        group.add_argument(f"--{field.replace('_', '-')}", dest=PREFIX + field, type=float, default=s, metavar="X")


def overrides_from(args: argparse.Namespace) -> dict:
    """The settings the user set on the command line (and only those), in the keys profiles use."""
    out = {}
    for key, value in vars(args).items():
        if key.startswith(PREFIX):
            field = key[len(PREFIX) :]
            out[field] = None if field == "quantization_method" and value == "none" else value
    if getattr(args, "model", None) is not None:
        out["model"] = args.model
    if getattr(args, "seed", None) is not None:
        out["seed"] = args.seed
    return out
