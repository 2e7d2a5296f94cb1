"""kv_cache_dtype: a bfloat16 KV cache under a float32 model.

The oracle is transformers with the same narrowing made explicit: its keys (after rotary) and values are
rounded to bfloat16 before attention, queries and everything else stay float32. Our logits must match
it as closely as the float32 engine matches plain transformers, on both CPU attention paths.
"""

from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama

from medvllm import LLM
from medvllm.config import Config
from medvllm.errors import ConfigError
from medvllm.hardware import GPUInfo, HardwareInfo
from tests.engine_probe import check_against_hf
from tests.models.test_parity import prompts_of
from tests.tiny_models import build_tiny

# Both sides round keys and values to bfloat16 (steps of 1/256 relative): where the two engines' float32
# keys differ in their last bit and sit at a rounding midpoint, one element rounds the other way. That
# bounds the agreement, not float32 rounding: 1e-3 (float32-only comparisons keep 1e-4).
BF16_KV_TOL = 1e-3


def _bf16(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).to(t.dtype)


@pytest.fixture(scope="module")
def hf_with_bf16_kv(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama_kv")
    model = build_tiny("llama", folder)
    rotate = modeling_llama.apply_rotary_pos_emb

    def rotate_then_round_keys(q, k, cos, sin, *args, **kwargs):
        q, k = rotate(q, k, cos, sin, *args, **kwargs)
        return q, _bf16(k)

    patch = pytest.MonkeyPatch()
    patch.setattr(modeling_llama, "apply_rotary_pos_emb", rotate_then_round_keys)
    for layer in model.model.layers:
        layer.self_attn.v_proj.register_forward_hook(lambda _m, _i, out: _bf16(out))
    yield folder, model
    patch.undo()


@pytest.mark.parametrize("impl", ["auto", "sdpa"])
def test_bf16_cache_matches_transformers_with_bf16_keys_and_values(hf_with_bf16_kv, impl):
    folder, model = hf_with_bf16_kv
    llm = LLM(
        str(folder),
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        attention_impl=impl,
        kv_cache_dtype="bfloat16",
    )
    info = llm.runtime_info()
    assert (info["dtype"], info["kv_cache_dtype"]) == ("float32", "bfloat16")
    assert llm.engine.runner.kv_cache.dtype == torch.bfloat16
    check_against_hf(model, llm, prompts_of([5, 17, 33, 40], seed=11), tol=BF16_KV_TOL)


def test_bf16_cache_takes_half_the_bytes_per_block(hf_with_bf16_kv):
    folder, _ = hf_with_bf16_kv
    sizes = {}
    for kv in ("auto", "bfloat16"):
        llm = LLM(str(folder), kvcache_block_size=16, kv_cache_space_gib=0.01, max_model_len=256, kv_cache_dtype=kv)
        sizes[kv] = llm.runtime_info()["kv_cache_blocks"]
    assert sizes["bfloat16"] in (2 * sizes["auto"], 2 * sizes["auto"] + 1)


CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30, gpus=(), backends={})
GPU = HardwareInfo(
    cpu_count=8,
    total_memory=32 << 30,
    available_memory=30 << 30,
    gpus=(GPUInfo("A100", (8, 0), 80 << 30),),
    backends={},
)


def test_float16_cache_is_refused_on_cpu():
    with pytest.raises(ConfigError, match="kv_cache_dtype='float16' is not supported on CPU"):
        Config(device="cpu", kv_cache_dtype="float16", hardware=CPU)


def test_a_narrower_cache_is_refused_with_flash_attention():
    with pytest.raises(ConfigError, match="flash kernels read the cache in the model's dtype"):
        Config(device="cuda", dtype="bfloat16", attention_impl="flash", kv_cache_dtype="float32", hardware=GPU)
    Config(
        device="cuda", dtype="bfloat16", attention_impl="flash", kv_cache_dtype="bfloat16", hardware=GPU
    )  # the model's own dtype, spelled out: fine


def test_unknown_cache_dtype_names_the_choices():
    with pytest.raises(ConfigError, match="kv_cache_dtype='int4' is invalid: use one of auto, float32, bfloat16"):
        Config(kv_cache_dtype="int4", hardware=CPU)


def test_memory_efficient_stores_a_float32_models_cache_in_bf16_on_cpu(hf_with_bf16_kv):
    """memory_efficient's automatic KV dtype is the same bf16 cache as above, and says so."""
    folder, model = hf_with_bf16_kv
    llm = LLM(str(folder), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, memory_efficient=True)
    assert llm.runtime_info()["kv_cache_dtype"] == "bfloat16"
    check_against_hf(model, llm, prompts_of([5, 17, 33, 40], seed=11), tol=BF16_KV_TOL)


def test_memory_efficient_cache_dtype_rules():
    kv = lambda **kw: Config(**kw).kv_torch_dtype  # noqa: E731
    assert kv(device="cpu", memory_efficient=True, hardware=CPU) == torch.bfloat16
    assert kv(device="cpu", memory_efficient=True, kv_cache_dtype="float32", hardware=CPU) == torch.float32
    assert kv(device="cpu", hardware=CPU) == torch.float32  # without it: the model's dtype
    # under bf16 mixed precision the model's dtype is already 16-bit: unchanged
    assert kv(device="cpu", memory_efficient=True, dtype="bfloat16", hardware=CPU) == torch.bfloat16
