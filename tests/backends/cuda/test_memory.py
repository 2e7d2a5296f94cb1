"""GPU memory: the KV pool leaves room for the largest step, and bitsandbytes profiles never hold the
float model on the card while loading. Skipped without CUDA (run by tests/backends/cuda/run_on_gpu.sh)."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from medvllm import LLM, SamplingParams

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _quiet_llm(**kwargs) -> LLM:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LLM(**kwargs)


def test_the_largest_step_fits_beside_a_pool_sized_to_the_limit():
    llm = _quiet_llm(
        device="cuda",
        dtype="bfloat16",
        max_model_len=2048,
        max_num_batched_tokens=8192,
        max_num_seqs=64,
        gpu_memory_utilization=0.9,
    )
    prompts = [[7 + i % 100] * 127 for i in range(64)]  # a full prompt step, then 64-wide decode
    outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    assert all(len(o.outputs[0].token_ids) == 8 for o in outs)
    free, total = torch.cuda.mem_get_info()
    assert total - free <= 0.9 * total + (256 << 20)  # the limit, give or take the CUDA context


def _peak(**kwargs) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    llm = _quiet_llm(num_kvcache_blocks=16, max_model_len=256, **kwargs)
    peak = torch.cuda.max_memory_allocated()
    del llm
    return peak


@pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")
@pytest.mark.parametrize("profile", ["gpu_8bit", "gpu_4bit"])
def test_bitsandbytes_loading_never_holds_the_float_decoder_on_the_card(profile):
    # the same model in fp16 holds its whole float decoder; quantized on the way in, the peak stays below it
    assert _peak(deployment_profile=profile) < _peak(device="cuda", dtype="float16")
