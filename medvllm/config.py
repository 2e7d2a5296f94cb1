"""Config: the single source of engine settings.

Everything downstream reads a Config; nothing downstream reads env vars or profiles.
Building one validates it, so a bad Config never reaches the engine: first on its own (types, ranges,
combinations), then against the HardwareInfo snapshot passed as `hardware=` (`medvllm.hardware.detect()`
for this machine, a fake one in tests), kept as `config.hardware`. Settings that do nothing on the chosen
device (or, like cudnn_benchmark, on any device) are accepted, listed in `config.warnings` and emitted as
ConfigWarning; a setting left at its default never warns.

One field per concept: `dtype` is what the model runs in, `attention_impl` the attention, and
`quantization_method` the quantization (its bit width follows from it: QUANT_METHOD_BITS). Profiles and
the CLI also accept older paired keys (enable_mixed_precision, quantization_bits, ...); the deployment
layer translates them (medvllm/deployment/translate.py) before a Config is built.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import KW_ONLY, InitVar, dataclass, fields

import torch

from medvllm.errors import ConfigError
from medvllm.hardware import HardwareInfo

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: float32
ATTENTION_IMPLS = ("auto", "sdpa", "flash")
KV_CACHE_DTYPES = ("auto", "float32", "bfloat16", "float16")  # auto: the dtype the model runs in
# Quantization methods a Config may name, with the bit width each one means (what this install implements:
# HardwareInfo.quantization_methods).
# gguf: the bits the file stores (None here: the file decides).
QUANT_METHOD_BITS = {"dynamic": 8, "gguf": None, "bnb-8bit": 8, "bnb-nf4": 4}
QUANT_METHOD_ALIASES = {"bnb-4bit": "bnb-nf4"}
QUANT_METHODS = tuple(QUANT_METHOD_BITS) + tuple(QUANT_METHOD_ALIASES)
CUDA_ONLY_METHODS = ("bnb-8bit", "bnb-nf4")
# How quantization_method="gguf" quantizes a projection's inputs, per block of 32 (medvllm/quantization/gguf.py):
# int8 (llama.cpp's scheme), int8x2 (two int8 parts, ~15 bits, everywhere), mixed (int8x2 into q/k/v and the LM
# head, int8 into the rest).
GGUF_ACTIVATIONS = ("mixed", "int8x2", "int8")


class ConfigWarning(UserWarning):
    """A setting is accepted but has no effect (or a cost) on this device."""


@dataclass
class Config:
    model: str | None = None
    # placement and parallelism
    device: str = "auto"  # auto | cpu | cuda
    tensor_parallel_size: int = 1
    # numerics
    dtype: str = "auto"  # auto (float32) | float32 | bfloat16 | float16: what the model runs in
    quantization_method: str | None = None  # None | dynamic | gguf | bnb-8bit | bnb-nf4 (alias bnb-4bit)
    gguf_activations: str = "mixed"  # mixed | int8x2 | int8: the gguf method's activation precision
    force_float16: bool = False  # run float16 even on a model known to overflow it (Gemma 3): quality compare shows it
    # attention and backend flags
    attention_impl: str = "auto"  # auto | sdpa | flash
    allow_tf32: bool = False
    cudnn_benchmark: bool = False
    # memory
    memory_efficient: bool = False
    enable_memory_pooling: bool = False
    pool_device: str = "auto"  # auto | cpu | cuda
    # scheduler and KV cache
    max_num_seqs: int = 128
    max_num_batched_tokens: int | None = (
        None  # tokens per step; None: 2048 on CPU (1024 memory_efficient), 8192 on CUDA
    )
    # prompt tokens a step may carry beside the running sequences' decode tokens (mixed steps: a long prompt
    # is spread over steps while streams keep getting tokens); None: 64 on CPU, 2048 on CUDA (at most
    # max_num_batched_tokens); 0: prompts run in steps of their own, decoding waits (no mixing)
    mixed_prompt_tokens: int | None = None
    scheduling_policy: str = "fcfs"  # fcfs | priority: waiting requests by `priority` (lower first), then arrival
    max_model_len: int | None = None
    kvcache_block_size: int = 16
    kv_cache_dtype: str = "auto"  # auto (the model's dtype; bfloat16 for a float32 model under memory_efficient on CPU)
    kv_cache_space_gib: float | None = None  # KV pool limit on CPU; None: 1 GiB, 0.4 GiB under memory_efficient
    gpu_memory_utilization: float = 0.9  # KV pool limit on CUDA (GPU_MEMORY_UTILIZATION)
    num_kvcache_blocks: int | None = None  # explicit pool size; overrides the two limits above
    enable_prefix_caching: bool = True
    seed: int = 0
    _: KW_ONLY
    # the machine to validate against and run on (not a setting): required, so that no Config probes
    # the machine by itself and tests decide with fake hardware
    hardware: InitVar[HardwareInfo]

    def __post_init__(self, hardware: HardwareInfo) -> None:
        if not isinstance(hardware, HardwareInfo):
            raise ConfigError(
                f"hardware={hardware!r} is invalid: Config needs a HardwareInfo snapshot; pass "
                "hardware=medvllm.hardware.detect() for this machine"
            )
        self.hardware = hardware
        self.derived: dict[str, str] = {}  # automatic field -> the setting that chose its value
        if self.max_num_batched_tokens is None and self.device in DEVICES:
            # longer prompts are prefilled in chunks of this many tokens: on CPU a step of 2,048 is as fast
            # per token as 8,192 and holds a quarter of the activations
            device = self.resolved_device.type
            self.max_num_batched_tokens = DEFAULT_BATCHED_TOKENS[device]
            if self.memory_efficient is True and device == "cpu":  # half the prompt step's activations
                self.max_num_batched_tokens = MEMORY_EFFICIENT_BATCHED_TOKENS
                self.derived["max_num_batched_tokens"] = "memory_efficient"
            if _is_int(self.max_num_seqs):  # every running sequence still gets its decode token
                self.max_num_batched_tokens = max(self.max_num_batched_tokens, self.max_num_seqs)
        if self.mixed_prompt_tokens is None and self.device in DEVICES and _is_int(self.max_num_batched_tokens):
            self.mixed_prompt_tokens = DEFAULT_MIXED_PROMPT_TOKENS[self.resolved_device.type]
            if self.mixed_prompt_tokens > self.max_num_batched_tokens:
                self.mixed_prompt_tokens = self.max_num_batched_tokens
                self.derived["mixed_prompt_tokens"] = "max_num_batched_tokens"
        kv_space_given = self.kv_cache_space_gib is not None  # the only limit a user may leave unset
        if self.kv_cache_space_gib is None:
            self.kv_cache_space_gib = DEFAULT_KV_SPACE_GIB[self.memory_efficient is True]
            if self.memory_efficient is True:
                self.derived["kv_cache_space_gib"] = "memory_efficient"
        check_fields(self)
        self.warnings: list[str] = check_hardware(self, hardware) + without_effect(
            self, effective_device(self, hardware), kv_space_given
        )
        if self.kv_cache_dtype == "auto" and kv_dtype(self, effective_device(self, hardware)) != run_dtype(self):
            self.derived["kv_cache_dtype"] = "memory_efficient"
        for message in self.warnings:
            _warnings.warn(message, ConfigWarning, stacklevel=3)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.field_names()}

    @property
    def resolved_device(self) -> torch.device:
        """The device the model runs on: `device`, with `auto` decided by the hardware snapshot."""
        return torch.device(effective_device(self, self.hardware))

    @property
    def torch_dtype(self) -> torch.dtype:
        """The dtype weights and activations run in."""
        return getattr(torch, run_dtype(self))

    @property
    def kv_torch_dtype(self) -> torch.dtype:
        """The dtype the KV cache stores: the model's (or memory_efficient's bf16) unless kv_cache_dtype says."""
        return getattr(torch, kv_dtype(self, self.resolved_device.type))


GPU_MEMORY_UTILIZATION = 0.9  # gpu_memory_utilization's default: another value on CPU is a user's setting
DEFAULT_BATCHED_TOKENS = {"cpu": 2048, "cuda": 8192}
MEMORY_EFFICIENT_BATCHED_TOKENS = 1024  # CPU: prompts prefill as fast as in 2,048-token steps, in less memory
# Prompt tokens beside the decode tokens of a mixed step (while a stream decodes). Measured on CPU with 8
# streams and three ~2,500-token prompts arriving (docs/SERVER.md): 48 kept the streams' gaps even but
# left the last prompt's first token at 1.66x the unmixed engine's; 64 met both (p99 2.1x and max 4.2x the
# median gap, first tokens <= 1.41x); 96 let the gaps reach 14x. CUDA: vLLM's server budget.
DEFAULT_MIXED_PROMPT_TOKENS = {"cpu": 64, "cuda": 2048}
SCHEDULING_POLICIES = ("fcfs", "priority")
# The CPU KV pool limit when kv_cache_space_gib is not given, without / with memory_efficient. 0.4 GiB of
# a bf16 cache holds ~18,600 tokens of the default model: 64 requests of 20-200 + 128 tokens at once.
DEFAULT_KV_SPACE_GIB = {False: 1.0, True: 0.4}


def fail(field_names: str | tuple[str, ...], message: str) -> ConfigError:
    """A ConfigError that also records which fields it is about (resolve uses this for provenance)."""
    err = ConfigError(message)
    err.fields = (field_names,) if isinstance(field_names, str) else tuple(field_names)
    return err


# --- checks on the Config alone ------------------------------------------------------------------------
_BOOLS = (
    "allow_tf32",
    "cudnn_benchmark",
    "memory_efficient",
    "enable_memory_pooling",
    "enable_prefix_caching",
    "force_float16",
)
_POSITIVE_INTS = ("tensor_parallel_size", "max_num_seqs", "kvcache_block_size")
_OPTIONAL_POSITIVE_INTS = ("max_model_len", "num_kvcache_blocks", "max_num_batched_tokens")
_ENUMS = {
    "device": DEVICES,
    "dtype": DTYPES,
    "attention_impl": ATTENTION_IMPLS,
    "pool_device": DEVICES,
    "kv_cache_dtype": KV_CACHE_DTYPES,
    "scheduling_policy": SCHEDULING_POLICIES,
    "gguf_activations": GGUF_ACTIVATIONS,
}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(c: Config) -> None:
    """Types, ranges and combinations that need no hardware. Normalizes aliases in place."""
    if c.model is not None and (not isinstance(c.model, str) or not c.model):
        raise fail(
            "model",
            f"model={c.model!r} is invalid: it must be a non-empty path or name, "
            "or None for the embedded default model",
        )
    for name in _BOOLS:
        if not isinstance(getattr(c, name), bool):
            raise fail(name, f"{name}={getattr(c, name)!r} is invalid: it must be true or false")
    for name in _POSITIVE_INTS:
        value = getattr(c, name)
        if not _is_int(value) or value < 1:
            raise fail(name, f"{name}={value!r} is invalid: it must be an integer >= 1")
    for name in _OPTIONAL_POSITIVE_INTS:
        value = getattr(c, name)
        if value is not None and (not _is_int(value) or value < 1):
            raise fail(name, f"{name}={value!r} is invalid: it must be an integer >= 1, or null for automatic")
    mixed = c.mixed_prompt_tokens
    if mixed is not None and (not _is_int(mixed) or mixed < 0):
        raise fail(
            "mixed_prompt_tokens",
            f"mixed_prompt_tokens={mixed!r} is invalid: it must be an integer >= 0 (0: no mixed steps), "
            "or null for automatic",
        )
    if not _is_int(c.seed) or c.seed < 0:
        raise fail("seed", f"seed={c.seed!r} is invalid: it must be an integer >= 0")
    for name, choices in _ENUMS.items():
        if getattr(c, name) not in choices:
            raise fail(name, f"{name}={getattr(c, name)!r} is invalid: use one of {', '.join(choices)}")
    space = c.kv_cache_space_gib
    if space is not None and (
        isinstance(space, bool) or not isinstance(space, (int, float)) or not 0 < space < math.inf
    ):
        raise fail(
            "kv_cache_space_gib",
            f"kv_cache_space_gib={space!r} is invalid: it must be a number of GiB > 0, or null for automatic",
        )
    util = c.gpu_memory_utilization
    if isinstance(util, bool) or not isinstance(util, (int, float)) or not 0 < util <= 1:
        raise fail(
            "gpu_memory_utilization",
            f"gpu_memory_utilization={util!r} is invalid: it must be a fraction in (0, 1], e.g. 0.9",
        )
    if c.max_num_batched_tokens is not None and c.max_num_batched_tokens < c.max_num_seqs:
        raise fail(
            ("max_num_batched_tokens", "max_num_seqs"),
            f"max_num_batched_tokens={c.max_num_batched_tokens} is smaller than max_num_seqs={c.max_num_seqs}: "
            "a step could not give each running sequence a token; raise max_num_batched_tokens",
        )
    method = c.quantization_method
    if method is not None and method not in QUANT_METHODS:
        raise fail(
            "quantization_method",
            f"quantization_method={method!r} is invalid: use one of "
            f"{', '.join(QUANT_METHODS)}, or null for no quantization",
        )
    c.quantization_method = QUANT_METHOD_ALIASES.get(method, method)
    if c.quantization_method in ("dynamic", "gguf") and run_dtype(c) != "float32":
        raise fail(
            ("quantization_method", "dtype"),
            f"quantization_method={c.quantization_method!r} computes in float32 around its int8 matmuls, but the model would "
            f"run in {run_dtype(c)}: set dtype to 'auto' or 'float32' (mixed precision off), or drop "
            "quantization",
        )


def quantization_bits(method: str | None) -> int | None:
    """The bit width a quantization method stores weights in (None: no quantization)."""
    return None if method is None else QUANT_METHOD_BITS[QUANT_METHOD_ALIASES.get(method, method)]


# --- checks against the hardware -----------------------------------------------------------------------
def effective_device(c: Config, hw: HardwareInfo) -> str:
    return ("cuda" if hw.has_cuda else "cpu") if c.device == "auto" else c.device


def run_dtype(c: Config) -> str:
    """The dtype the model runs in, spelled as in `dtype`."""
    return "float32" if c.dtype == "auto" else c.dtype


def check_hardware(c: Config, hw: HardwareInfo) -> list[str]:
    """Raise ConfigError for what this machine cannot run; return warnings for what does nothing here."""
    warn: list[str] = []
    if c.device == "cuda" and not hw.has_cuda:
        raise fail("device", "device='cuda' but no CUDA GPU is available here: use device 'cpu' or 'auto'")
    device = effective_device(c, hw)
    if c.pool_device == "cuda" and device != "cuda":
        raise fail(
            "pool_device",
            f"pool_device='cuda' needs the CUDA device, but the model runs on {device}: "
            "set pool_device to 'auto' or 'cpu'",
        )
    tp = c.tensor_parallel_size
    if device == "cuda" and tp > hw.launch_gpus:
        raise fail(
            "tensor_parallel_size",
            f"tensor_parallel_size={tp} needs {tp} GPUs, but {hw.launch_gpus} "
            f"{'is' if hw.launch_gpus == 1 else 'are'} present: use at most "
            f"{hw.launch_gpus}, or a single-GPU profile such as "
            "onprem_gpu_bf16_flash or gpu_8bit",
        )
    if device == "cpu" and tp > 1:
        warn.append(
            f"tensor_parallel_size={tp} on CPU runs {tp} processes over gloo: useful for testing, usually slower than 1"
        )
    method = c.quantization_method
    if method in CUDA_ONLY_METHODS:
        if device != "cuda":
            raise fail(
                ("quantization_method", "device"),
                f"quantization_method={method!r} (bitsandbytes) needs a CUDA GPU, but the model runs on "
                "cpu: use quantization_method='dynamic' (8-bit) on CPU, or run on a CUDA device",
            )
        if not hw.has_backend("bitsandbytes"):
            raise fail(
                "quantization_method",
                f"quantization_method={method!r} needs the bitsandbytes package, "
                "which is not installed: pip install bitsandbytes, or drop quantization",
            )
    if method in ("dynamic", "gguf") and device != "cpu":
        raise fail(
            ("quantization_method", "device"),
            f"quantization_method={method!r} (native CPU kernels) runs on CPU only, but the model runs on "
            "cuda: set device='cpu', or use 'bnb-8bit' / 'bnb-nf4' on CUDA",
        )
    if method is not None and not hw.engine_implements(method):
        raise fail(
            "quantization_method",
            f"quantization_method={method!r} is not implemented by this version of "
            "the engine: drop quantization (quantization_method=null), or use "
            "--deployment-profile none",
        )
    dtype = run_dtype(c)
    if dtype == "float16" and device == "cpu":
        raise fail(
            ("dtype", "device"),
            "dtype='float16' (fp16, half-precision float16) is not supported on CPU: "
            "use bfloat16 (bf16) or float32 on CPU, or run on a CUDA device",
        )
    if dtype == "bfloat16":
        if device == "cuda" and hw.min_gpu_sm < 8:
            raise fail(
                ("dtype", "device"),
                f"dtype='bfloat16' (bf16) needs an Ampere or newer GPU (SM >= 8); this "
                f"one is SM {hw.min_gpu_sm}: use dtype='float16' (fp16) instead",
            )
        if device == "cpu" and not hw.cpu_native_bf16:
            warn.append(
                "bfloat16 on a CPU without native bf16 (avx512_bf16/amx) is emulated and may be slower than float32"
            )
    if c.attention_impl == "flash":
        if device != "cuda":
            raise fail(
                ("attention_impl", "device"),
                "flash attention needs a CUDA GPU, but the model runs on cpu: "
                "set attention_impl to 'sdpa' or 'auto' and turn flash attention off",
            )
        if hw.min_gpu_sm < 8:
            raise fail(
                "attention_impl",
                f"flash attention needs an Ampere or newer GPU (SM >= 8); this one is SM {hw.min_gpu_sm}: "
                "use attention_impl='sdpa'",
            )
    _check_kv_cache_dtype(c, device)
    return warn


def without_effect(c: Config, device: str, kv_space_given: bool) -> list[str]:
    """One warning per setting the user changed from its default that does nothing on `device`."""
    warn = []
    if c.allow_tf32 and device != "cuda":
        warn.append(f"allow_tf32=true does nothing on {device}: it only affects CUDA")
    if c.cudnn_benchmark:
        warn.append(
            "cudnn_benchmark=true does nothing: cuDNN benchmarks convolutions, and these models have none; drop it"
        )
    if device != "cuda" and c.gpu_memory_utilization != GPU_MEMORY_UTILIZATION:
        warn.append(
            f"gpu_memory_utilization={c.gpu_memory_utilization!r} does nothing on {device}: it limits the KV cache "
            "on CUDA; on CPU use kv_cache_space_gib"
        )
    if device == "cuda" and kv_space_given and c.num_kvcache_blocks is None:
        warn.append(
            f"kv_cache_space_gib={c.kv_cache_space_gib!r} does nothing on cuda: it limits the KV cache on CPU; "
            "on CUDA use gpu_memory_utilization or num_kvcache_blocks"
        )
    if c.force_float16 and c.dtype != "float16":
        warn.append(
            f"force_float16=true does nothing with dtype={c.dtype!r}: it only lets dtype='float16' run a model that "
            "overflows it (Gemma 3); drop it"
        )
    if c.gguf_activations != "mixed" and c.quantization_method != "gguf":
        warn.append(
            f"gguf_activations={c.gguf_activations!r} does nothing with quantization_method="
            f"{c.quantization_method!r}: it sets the gguf method's activation precision; drop it"
        )
    if c.pool_device != "auto" and not c.enable_memory_pooling:
        warn.append(
            f"pool_device={c.pool_device!r} does nothing with enable_memory_pooling=false: turn pooling on, "
            "or leave pool_device 'auto'"
        )
    return warn


def kv_dtype(c: Config, device: str) -> str:
    """The dtype the KV cache stores, spelled as in `dtype`. `auto` is the model's dtype, except that
    memory_efficient on CPU keeps a float32 model's cache in bfloat16: half the bytes, which every decode
    step reads whole, and widened exactly to float32 for the arithmetic (docs/QUALITY.md measures it)."""
    if c.kv_cache_dtype != "auto":
        return c.kv_cache_dtype
    if c.memory_efficient is True and device == "cpu" and run_dtype(c) == "float32":
        return "bfloat16"
    return run_dtype(c)


def _check_kv_cache_dtype(c: Config, device: str) -> None:
    kv = kv_dtype(c, device)
    if kv == "float16" and device == "cpu":
        raise fail(
            ("kv_cache_dtype", "device"),
            "kv_cache_dtype='float16' is not supported on CPU (its attention "
            "kernels read float32 or bfloat16 caches): use 'bfloat16' or 'auto'",
        )
    if kv != run_dtype(c) and c.attention_impl == "flash":
        raise fail(
            ("kv_cache_dtype", "attention_impl"),
            f"kv_cache_dtype={c.kv_cache_dtype!r} differs from the model's {run_dtype(c)}, and the flash "
            "kernels read the cache in the model's dtype: set kv_cache_dtype='auto', or attention_impl='sdpa'",
        )
