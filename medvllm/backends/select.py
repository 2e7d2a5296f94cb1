"""Which implementation each part of the model runs on, decided once per engine, and why.

The choice is made here and nowhere else, from the Config (and the HardwareInfo snapshot it was
validated against), the model's architecture, and whether this machine can build the native CPU
kernels. The result is a LayerKit, which every layer receives at construction, and a record of each
choice with its reason, which runtime_info reports. A setting the machine cannot honour is a
ConfigError; a faster path that cannot run here gives way only to one with the same numerics, and the
record says so.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch

from medvllm.config import ConfigWarning
from medvllm.errors import ConfigError
from medvllm.layers.kit import LayerKit
from medvllm.layers.linear import UNQUANTIZED, Float32Logits, LinearMethod

log = logging.getLogger(__name__)

LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class ModelTraits:
    """What of a model's architecture the choice depends on."""

    hidden_size: int
    head_dim: int
    qk_norm: bool = False
    sliding_window: bool = False
    tp_size: int = 1
    attn_softcap: bool = False  # soft-capped attention scores (Gemma 2): only PagedAttention's PyTorch path
    llama_decoder: bool = True  # the decoder layer is Llama's, the one the fused CPU layer implements
    fp16_overflows: bool = False  # the model's activations leave float16's range (Gemma 3)
    gemma3_decoder: bool = False  # Gemma 3's layer, which the fused CPU layer implements too

    @classmethod
    def of(cls, hf_config, arch_options, tp_size: int = 1) -> ModelTraits:
        head_dim = getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads
        return cls(
            hf_config.hidden_size,
            head_dim,
            arch_options.qk_norm,
            arch_options.sliding_window is not None,
            tp_size,
            getattr(arch_options, "attn_softcap", None) is not None,
            getattr(arch_options, "llama_decoder", True),
            getattr(arch_options, "fp16_overflows", False),
            getattr(arch_options, "gemma3_decoder", False),
        )


@dataclass(frozen=True)
class Backends:
    attention: str  # sdpa | cpu-paged | flash-attn | sdpa-flash
    linear: str  # the decoder projections' LinearMethod name
    lm_head: str
    embedding: str  # float | int8-rows
    norm: str  # native | torch
    decode_layer: str  # native (one C call per decoder layer) | torch
    sampler: str  # the greedy pick: native | torch
    reasons: dict[str, str] = field(compare=False)
    kit: LayerKit = field(compare=False, repr=False)

    def names(self) -> dict[str, str]:
        return {part: getattr(self, part) for part in PARTS}


SOFTCAP_REASON = "soft-capped attention scores: only the PyTorch path applies the cap"

PARTS = ("attention", "linear", "lm_head", "embedding", "norm", "decode_layer", "sampler")


def select_backends(config, traits: ModelTraits) -> Backends:
    if traits.fp16_overflows and config.torch_dtype == torch.float16:
        if not config.force_float16:
            raise ConfigError(
                "dtype='float16' cannot run this model (Gemma 3): its activations overflow float16's range and the "
                "output turns to garbage; use dtype='bfloat16' or 'float32' (or force_float16=true to run it "
                "anyway, then measure it with `quality compare`)"
            )
        warnings.warn(
            "force_float16: running a model whose activations overflow float16 (Gemma 3) in float16 as asked; "
            "its answers may be garbage: measure them with `quality compare`",
            ConfigWarning,
            stacklevel=2,
        )
    if config.resolved_device.type == "cuda":
        return _cuda(config, traits)
    return _cpu(config, traits)


# --- CPU -----------------------------------------------------------------------------------------------
def native_unavailable() -> str | None:
    """Why the native CPU kernels cannot run here, or None when they can (built at first call)."""
    from medvllm.backends.cpu.native import binding
    from medvllm.backends.cpu.native.build import NativeUnavailable

    try:
        binding.library()
        return None
    except NativeUnavailable as e:
        return str(e)


def _cpu(config, traits: ModelTraits) -> Backends:
    missing = native_unavailable()
    native = missing is None
    f32 = config.torch_dtype == torch.float32
    why: dict[str, str] = {}
    if missing is not None:  # same numerics on PyTorch's kernels, only slower: say so once
        log.warning("native CPU kernels unavailable (%s); PyTorch's kernels run in their place", missing)

    linear, head, embedding, attention_linear = _cpu_linear(config, traits, native, missing, why)

    if config.attention_impl == "sdpa":
        attention, why["attention"] = None, "attention_impl='sdpa'"
    elif traits.attn_softcap:
        attention, why["attention"] = None, SOFTCAP_REASON
    elif native:
        from medvllm.backends.cpu.attention import CpuPagedBackend

        attention, why["attention"] = CpuPagedBackend(), "the native paged kernel reads the cache in place"
    else:
        attention, why["attention"] = None, f"native kernels unavailable ({missing})"

    if native and f32:
        from medvllm.backends.cpu.norm import native_rms_norm

        norm, why["norm"] = native_rms_norm(), "float32 on CPU: the C kernel"
    else:
        norm, why["norm"] = None, "float32 only" if native else f"native kernels unavailable ({missing})"

    blocker = _fused_blocker(config, traits, native, f32, linear, attention)
    fused = None
    if blocker is None:
        from medvllm.backends.cpu.decode_layer import fused_decode_layers

        fused, why["decode_layer"] = fused_decode_layers(), "one C call per decoder layer"
    else:
        why["decode_layer"] = blocker
    if native:
        from medvllm.backends.cpu.argmax import native_first_max

        argmax, why["sampler"] = native_first_max(), "the C kernel's one pass over float32 logits"
    else:
        argmax, why["sampler"] = None, f"native kernels unavailable ({missing})"
    kit = LayerKit(
        linear=linear,
        attention_linear=attention_linear,
        lm_head=head,
        embedding=embedding,
        norm=norm,
        attention=attention,
        fused_layers=fused,
        argmax=argmax,
    )
    return _record(kit, why)


def _cpu_linear(config, traits, native: bool, missing: str | None, why: dict):
    """(decoder method, head method, the embedding's form, q/k/v's method where it differs)."""
    method = config.quantization_method
    if method == "gguf":
        if not native:
            raise ConfigError(
                f"quantization_method='gguf' needs the native GGUF kernels, which cannot be built here "
                f"({missing}): install a C compiler (e.g. apt-get install gcc), or drop quantization"
            )
        from medvllm.quantization.gguf import methods

        decoder, attention, head = methods(config.gguf_activations)
        why["linear"] = why["lm_head"] = why["embedding"] = (
            f"quantization_method='gguf': the file's own blocks, gguf_activations={config.gguf_activations!r}"
        )
        return decoder, head, "gguf", attention
    if method == "dynamic":
        if not native:
            raise ConfigError(
                f"quantization_method='dynamic' needs the native int8 kernel, which cannot be built "
                f"here ({missing}): install a C compiler (e.g. apt-get install gcc), or drop quantization"
            )
        from medvllm.quantization.dynamic_int8 import DynamicInt8Method
        from medvllm.quantization.int8_head import Int8RowsHead

        why["linear"] = why["lm_head"] = why["embedding"] = "quantization_method='dynamic'"
        return DynamicInt8Method(), Int8RowsHead(traits.hidden_size), "int8-rows", None
    why["embedding"] = "no quantization"
    if config.torch_dtype != torch.float32:
        why["linear"], why["lm_head"] = "PyTorch's low-precision matmul", "logits in float32 under mixed precision"
        return UNQUANTIZED, Float32Logits(), "float", None
    if native:
        from medvllm.backends.cpu.panel_linear import PanelFloatMethod

        panels = PanelFloatMethod()
        why["linear"] = why["lm_head"] = "float32 on CPU: weights packed once into the kernel's panels"
        return panels, panels, "float", None
    why["linear"] = why["lm_head"] = f"native kernels unavailable ({missing}): F.linear, the same float32 numerics"
    return UNQUANTIZED, UNQUANTIZED, "float", None


def _fused_blocker(config, traits: ModelTraits, native: bool, f32: bool, linear: LinearMethod, attention) -> str | None:
    """Why the fused decoder layer cannot run this model here, or None when it can."""
    from medvllm.backends.cpu.attention import CACHE_DTYPES
    from medvllm.backends.cpu.decode_layer import MAX_HEAD_DIM

    if not native:
        return "native kernels unavailable"
    if not f32:
        return "float32 only"
    if traits.tp_size != 1:
        return "tensor parallel"
    if not (traits.llama_decoder or traits.gemma3_decoder):
        return "the fused decoder layer implements Llama's and Gemma 3's layers only"
    if traits.qk_norm and not traits.gemma3_decoder:
        return "q/k norms"
    if linear.name not in ("dynamic-int8", "float-panels", "gguf"):
        return f"linear method {linear.name}"
    if config.kv_torch_dtype not in CACHE_DTYPES or attention is None:
        return "the attention backend or KV cache dtype"
    if traits.head_dim > MAX_HEAD_DIM:
        return "head_dim"
    return None


# --- CUDA ----------------------------------------------------------------------------------------------
def _cuda(config, traits: ModelTraits) -> Backends:
    why: dict[str, str] = {}
    dtype = config.torch_dtype
    attention = _cuda_attention(config, traits, dtype, why)
    method = config.quantization_method
    if method in ("bnb-8bit", "bnb-nf4"):
        from medvllm.quantization.bnb import Bnb8bitMethod, BnbNf4Method

        linear = {"bnb-8bit": Bnb8bitMethod, "bnb-nf4": BnbNf4Method}[method](config.resolved_device)
        why["linear"] = f"quantization_method={method!r}"
    else:
        linear, why["linear"] = UNQUANTIZED, "no quantization"
    if dtype in LOW_PRECISION:
        head, why["lm_head"] = Float32Logits(), "logits in float32 under mixed precision"
    else:
        head, why["lm_head"] = UNQUANTIZED, "float32 model"
    why["embedding"], why["norm"] = "no int8 table on CUDA", "PyTorch's on CUDA"
    why["decode_layer"] = why["sampler"] = "native kernels are CPU only"
    return _record(LayerKit(linear=linear, lm_head=head, attention=attention), why)


def _cuda_attention(config, traits: ModelTraits, dtype: torch.dtype, why: dict):
    from medvllm.backends.cuda.flash_attention import FlashAttnBackend, SdpaFlashBackend

    hardware = config.hardware
    low = dtype in LOW_PRECISION
    if traits.attn_softcap:
        if config.attention_impl == "flash":
            raise ConfigError(
                "attention_impl='flash' cannot run this model: its attention scores are soft-capped (Gemma 2), "
                "which only the PyTorch path applies; use attention_impl='sdpa' or 'auto'"
            )
        why["attention"] = SOFTCAP_REASON
        return None
    if config.attention_impl == "flash":  # the Config checked the GPU generation
        if not low:
            raise ConfigError(
                f"flash attention runs in fp16/bf16 only, but the model runs in "
                f"{str(dtype).replace('torch.', '')}: set dtype to bfloat16 or float16, or use "
                "attention_impl='sdpa'"
            )
        if hardware.has_backend("flash_attn"):
            try:
                backend = FlashAttnBackend()
            except ImportError as e:
                raise ConfigError(
                    f"attention_impl='flash' needs the flash-attn package, which fails to import "
                    f"({e}): reinstall it (pip install 'medvllm[flash]'), or use attention_impl='sdpa'"
                ) from None
            why["attention"] = "attention_impl='flash', flash-attn installed"
            return backend
        if traits.sliding_window:
            raise ConfigError(
                "this model uses sliding-window attention, which PyTorch's flash kernel lacks: "
                "pip install flash-attn, or use attention_impl='sdpa'"
            )
        why["attention"] = "attention_impl='flash' without flash-attn: PyTorch's flash kernel"
        return SdpaFlashBackend()
    if config.attention_impl == "auto" and low and hardware.min_gpu_sm >= 8 and hardware.has_backend("flash_attn"):
        if config.kv_torch_dtype != dtype:
            why["attention"] = "the KV cache dtype differs from the model's, which flash-attn cannot read"
            return None
        try:
            backend = FlashAttnBackend()
        except ImportError as e:
            why["attention"] = f"flash-attn fails to import ({e})"
            return None
        why["attention"] = "auto: flash-attn installed, fp16/bf16 on SM >= 8"
        return backend
    why["attention"] = f"attention_impl={config.attention_impl!r}"
    return None


def _record(kit: LayerKit, why: dict[str, str]) -> Backends:
    attention = "sdpa" if kit.attention is None else kit.attention.name
    return Backends(
        attention=attention,
        linear=kit.linear.name,
        lm_head=kit.lm_head.name,
        embedding=kit.embedding,
        norm="torch" if kit.norm is None else "native",
        decode_layer="torch" if kit.fused_layers is None else "native",
        sampler="torch" if kit.argmax is None else "native",
        reasons=why,
        kit=kit,
    )
