"""Will a model fit? A coarse estimate: weights at the profile's precision plus a minimal KV cache.

Used by auto-selection to skip a candidate that cannot load (an 8 GiB card and a 7B model in bf16), so
it errs on the side of a small overhead rather than precision.
"""

from __future__ import annotations

from dataclasses import dataclass

from medvllm.config import Config, effective_device, quantization_bits, run_dtype
from medvllm.hardware import HardwareInfo

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
MIN_KV_TOKENS = 2048  # a minimal KV cache: one sequence this long (or max_model_len when shorter)
OVERHEAD = 1.10  # quantization scales, unquantized embeddings and norms, allocator slack
GIB = 2**30


@dataclass(frozen=True)
class ModelInfo:
    name: str
    num_params: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    max_position: int | None = None
    file_bytes: int | None = None  # a GGUF file's size: what the gguf method holds in memory
    quant_type: str | None = None  # a GGUF file's quantized matrix type (e.g. Q4_K); None: float weights

    @classmethod
    def from_hf_config(cls, cfg: dict, name: str = "model") -> ModelInfo:
        """Llama-family sizes from a Hugging Face config.json dict."""
        h, layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
        heads = int(cfg["num_attention_heads"])
        kv_heads = int(cfg.get("num_key_value_heads") or heads)
        head_dim = int(cfg.get("head_dim") or h // heads)
        inter, vocab = int(cfg["intermediate_size"]), int(cfg["vocab_size"])
        per_layer = 2 * h * heads * head_dim + 2 * h * kv_heads * head_dim + 3 * h * inter + 2 * h
        embed = vocab * h * (1 if cfg.get("tie_word_embeddings", False) else 2)
        return cls(
            name=name,
            num_params=layers * per_layer + embed + h,
            num_layers=layers,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            max_position=cfg.get("max_position_embeddings"),
        )


@dataclass(frozen=True)
class Fit:
    fits: bool
    needed: int  # bytes per device
    budget: int  # bytes per device
    device: str

    def describe(self) -> str:
        verb = "fits in" if self.fits else "does not fit in"
        where = "GPU memory usable" if self.device == "cuda" else "free RAM"
        return f"needs ~{self.needed / GIB:.1f} GiB per device, {verb} {self.budget / GIB:.1f} GiB of {where}"


def weight_bytes_per_param(c: Config, model: ModelInfo | None = None) -> float:
    if c.quantization_method == "gguf" and model is not None and model.file_bytes:
        return model.file_bytes / model.num_params  # the file's own blocks
    bits = quantization_bits(c.quantization_method)
    return DTYPE_BYTES[run_dtype(c)] if bits is None else bits / 8


def estimate(c: Config, model: ModelInfo, hw: HardwareInfo) -> Fit:
    device = effective_device(c, hw)
    tp = c.tensor_parallel_size
    weights = model.num_params * weight_bytes_per_param(c, model) * OVERHEAD / tp
    limit = c.max_model_len or model.max_position or MIN_KV_TOKENS
    tokens = min(limit, MIN_KV_TOKENS)
    kv_dtype = DTYPE_BYTES["float32" if c.quantization_method in ("dynamic", "gguf") else run_dtype(c)]
    kv = 2 * model.num_layers * model.num_kv_heads * model.head_dim * tokens * kv_dtype / tp
    needed = int(weights + kv)
    if device == "cuda":
        budget = int(hw.min_gpu_memory * c.gpu_memory_utilization)
    else:
        budget = int(hw.available_memory or hw.total_memory)
    return Fit(fits=needed <= budget, needed=needed, budget=budget, device=device)
