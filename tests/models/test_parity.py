"""Our logits equal transformers' (same weights, float32) for every supported architecture."""

from __future__ import annotations

import pytest
import torch

from medvllm import LLM
from medvllm.layers.norm import RMSNorm
from tests.engine_probe import check_against_hf, hf_logits
from tests.tiny_models import ARCHS, build_tiny

TOL = 1e-4


def prompts_of(lengths, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in lengths]


# "auto" on CPU decodes through the native paged kernel and norms through the native RMSNorm; "sdpa"
# keeps every step on PyTorch (SDPA, and the norms' PyTorch path)
@pytest.fixture(
    scope="module", params=[(arch, impl) for arch in ARCHS for impl in ("auto", "sdpa")], ids=lambda p: f"{p[0]}-{p[1]}"
)
def tiny(request, tmp_path_factory):
    arch, impl = request.param
    folder = tmp_path_factory.mktemp(arch)
    model = build_tiny(arch, folder)
    llm = LLM(str(folder), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, attention_impl=impl)
    assert llm.runtime_info()["attention_backend"] == ("cpu-paged" if impl == "auto" else "sdpa")
    assert llm.runtime_info()["rms_norm"] == "native"
    if impl == "sdpa":
        for module in llm.engine.runner.model.modules():
            if isinstance(module, RMSNorm):
                module.kernel = None
    return arch, model, llm


def test_batch_of_mixed_lengths_matches_transformers(tiny):
    _, model, llm = tiny
    check_against_hf(model, llm, prompts_of([5, 17, 33, 40], seed=1))


def test_prefix_cache_hit_matches_transformers(tiny):
    _, model, llm = tiny
    first = prompts_of([40], seed=2)[0]
    check_against_hf(model, llm, [first])
    before = llm.engine.stats()
    second = first[:32] + prompts_of([7], seed=3)[0]  # shares two 16-token blocks
    outs = check_against_hf(model, llm, [second])
    after = llm.engine.stats()
    assert outs[0].metrics.num_cached_tokens == 32
    assert after["prefix_cache_hit_tokens"] - before["prefix_cache_hit_tokens"] == 32
    assert after["prefill_tokens_computed"] - before["prefill_tokens_computed"] == len(second) - 32


def test_reset_prefix_cache_makes_the_next_request_compute_its_whole_prompt(tiny):
    _, model, llm = tiny
    prompt = prompts_of([40], seed=7)[0]
    check_against_hf(model, llm, [prompt])
    assert llm.reset_prefix_cache()
    before = llm.engine.stats()
    outs = check_against_hf(model, llm, [prompt])
    assert outs[0].metrics.num_cached_tokens == 0
    assert llm.engine.stats()["prefill_tokens_computed"] - before["prefill_tokens_computed"] == len(prompt)


def test_prefix_shared_within_one_batch_matches_transformers(tiny):
    _, model, llm = tiny
    head = prompts_of([40], seed=4)[0]
    sibling = head[:32] + prompts_of([5], seed=5)[0]
    outs = check_against_hf(model, llm, [head, sibling])  # the sibling reads blocks written this step
    assert outs[1].metrics.num_cached_tokens == 32


def test_scoring_matches_transformers_and_leaves_prefix_cache_intact(tiny):
    _, model, llm = tiny
    head = prompts_of([40], seed=6)[0]
    check_against_hf(model, llm, [head])
    text = prompts_of([200], seed=7)[0]
    diff = (llm.engine.score(text) - hf_logits(model, text)).abs().max().item()
    assert diff < TOL
    outs = check_against_hf(model, llm, [head[:32] + prompts_of([6], seed=8)[0]])
    assert outs[0].metrics.num_cached_tokens == 32
