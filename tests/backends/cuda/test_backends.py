"""GPU backends end to end on the default model: bitsandbytes 8-bit / NF4, fp16, bf16 + flash attention,
TF32 and cuDNN flags, memory pooling on CUDA, and the shipped GPU profiles. Skipped without CUDA.

Thresholds are teacher-forced against the same model in float32 on the GPU (quant_quality.PASSAGES);
they are first guesses from the CPU measurements (int8 KL 0.07, bf16 KL 0.0014) and must be confirmed
on a GPU: bf16/fp16 KL <= 0.01 and top-1 >= 0.97; 8-bit KL <= 0.15, top-1 >= 0.8; NF4 KL <= 0.5, top-1 >= 0.7.
"""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from medvllm import LLM, SamplingParams
from tests.quant_quality import teacher_forced

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
SM = torch.cuda.get_device_capability()[0] if torch.cuda.is_available() else 0
needs_ampere = pytest.mark.skipif(SM < 8, reason="needs SM >= 8")
SMALL = dict(max_model_len=1024, max_num_batched_tokens=2048, num_kvcache_blocks=256)


def _llm(**kwargs) -> LLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LLM(**{**SMALL, **kwargs})


@pytest.fixture(scope="module")
def fp32_gpu():
    return _llm(device="cuda")


def _close(ref, llm, kl, top1):
    q = teacher_forced(ref, llm, ref.tokenizer)
    assert q["kl_mean"] <= kl and q["top1"] >= top1, q


def _answers(llm):
    out = llm.generate(["What is hypertension?"], SamplingParams(max_tokens=16, temperature=0))
    return out[0].outputs[0].text


def test_fp16_on_cuda(fp32_gpu):
    llm = _llm(device="cuda", enable_mixed_precision=True, mixed_precision_dtype="fp16")
    assert llm.runtime_info()["dtype"] == "float16" and llm.runtime_info()["lm_head"] == "float32-logits"
    _close(fp32_gpu, llm, 0.01, 0.97)


@needs_ampere
def test_bf16_on_cuda(fp32_gpu):
    _close(fp32_gpu, _llm(device="cuda", enable_mixed_precision=True), 0.01, 0.97)


@needs_bnb
def test_bnb_8bit(fp32_gpu):
    llm = _llm(device="cuda", quantization_method="bnb-8bit", enable_mixed_precision=True, mixed_precision_dtype="fp16")
    info = llm.runtime_info()["quantization"]
    assert info["method"] == "bnb-8bit" and info["layers"] == 4 * 30
    _close(fp32_gpu, llm, 0.15, 0.8)


@needs_bnb
def test_bnb_nf4(fp32_gpu):
    llm = _llm(device="cuda", quantization_method="bnb-nf4", enable_mixed_precision=True, mixed_precision_dtype="fp16")
    assert llm.runtime_info()["quantization"]["method"] == "bnb-nf4"
    _close(fp32_gpu, llm, 0.5, 0.7)


@needs_ampere
@pytest.mark.parametrize("block_size", [16, 256])
def test_flash_attention_matches_sdpa(block_size):
    sdpa = _llm(
        device="cuda",
        enable_mixed_precision=True,
        attention_impl="sdpa",
        kvcache_block_size=block_size,
        num_kvcache_blocks=4096 // block_size,
    )
    flash = _llm(
        device="cuda",
        enable_mixed_precision=True,
        attention_impl="flash",
        kvcache_block_size=block_size,
        num_kvcache_blocks=4096 // block_size,
    )
    backend = flash.runtime_info()["attention_backend"]
    assert backend == ("flash-attn" if importlib.util.find_spec("flash_attn") else "sdpa-flash")
    _close(sdpa, flash, 0.005, 0.98)
    prompts = ["What is hypertension?", "List three symptoms of type 2 diabetes, with a short explanation each."]
    params = SamplingParams(max_tokens=24, temperature=0)
    same = [
        a.outputs[0].token_ids[:8] == b.outputs[0].token_ids[:8]
        for a, b in zip(sdpa.generate(prompts, params), flash.generate(prompts, params))
    ]
    assert all(same)


def test_tf32_and_cudnn_flags_in_force_during_steps_only_and_recorded():
    before = torch.backends.cuda.matmul.fp32_precision
    llm = _llm(device="cuda", allow_tf32=True, cudnn_benchmark=True)
    on = llm.runtime_info()
    assert on["allow_tf32"] is True and on["cudnn_benchmark"] is True
    seen = []
    llm.engine.runner.model.register_forward_pre_hook(
        lambda *_: seen.append((torch.backends.cuda.matmul.fp32_precision, torch.backends.cudnn.benchmark))
    )
    _answers(llm)
    assert seen and set(seen) == {("tf32", True)}
    assert torch.backends.cuda.matmul.fp32_precision == before  # another engine is not run in TF32
    off = _llm(device="cuda").runtime_info()
    assert off["allow_tf32"] is False and off["cudnn_benchmark"] is False


def test_memory_pool_on_cuda_allocates_nothing_new_per_decode_step():
    llm = _llm(device="cuda", enable_memory_pooling=True, pool_device="cuda")
    engine = llm.engine
    assert engine.runner.kv_cache.device.type == "cuda"
    params = SamplingParams(max_tokens=300, temperature=0, ignore_eos=True)
    for i in range(8):
        engine.add_request([5 + i, 6, 7, 8], params)
    for _ in range(20):  # prefill and the first decode steps warm the caching allocator
        engine.step()
    torch.cuda.synchronize()
    reserved = torch.cuda.memory_reserved()
    peaks = []
    for _ in range(200):
        engine.step()
        peaks.append(torch.cuda.memory_allocated())
    assert torch.cuda.memory_reserved() == reserved
    assert max(peaks) - min(peaks) < 16 << 20


def test_memory_pool_against_an_unpooled_control():
    """The same requests give the same tokens with and without the pool, and the pooled engine holds its
    whole KV pool from the start. (Without pooling, engine/kv_cache.zeroed also allocates the whole cache
    with torch.zeros on CUDA, so the flat decode memory above is not the pool's doing.)"""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    prompts = [[5 + i, 6, 7, 8] for i in range(4)]
    runs = {}
    for pooled in (False, True):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        start = torch.cuda.memory_allocated()
        llm = _llm(device="cuda", enable_memory_pooling=pooled, **({"pool_device": "cuda"} if pooled else {}))
        kv = llm.engine.runner.kv_cache
        held_at_start = torch.cuda.memory_allocated() - start >= kv.numel() * kv.element_size()
        runs[pooled] = ([o.outputs[0].token_ids for o in llm.generate(prompts, params)], held_at_start)
        assert llm.runtime_info()["memory_pool"] is pooled
        del llm, kv
    assert runs[True][0] == runs[False][0]
    assert runs[True][1]


@pytest.mark.parametrize("profile", ["gpu_8bit", "gpu_4bit", "onprem_gpu_bf16_flash", "cloud_gpu_tp4_fp16"])
def test_shipped_gpu_profiles_run(profile):
    if profile.startswith("gpu_") and importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("needs bitsandbytes")
    if profile == "onprem_gpu_bf16_flash" and SM < 8:
        pytest.skip("needs SM >= 8")
    if profile == "cloud_gpu_tp4_fp16" and torch.cuda.device_count() < 4:
        pytest.skip("needs 4 GPUs")
    llm = _llm(deployment_profile=profile)
    info = llm.runtime_info()
    assert info["device"].startswith("cuda") and len(_answers(llm)) > 0
    if profile == "onprem_gpu_bf16_flash":
        assert info["attention_backend"] in ("flash-attn", "sdpa-flash") and info["allow_tf32"] is True
    if profile.startswith("gpu_"):
        assert info["quantization"]["method"] == {"gpu_8bit": "bnb-8bit", "gpu_4bit": "bnb-nf4"}[profile]
