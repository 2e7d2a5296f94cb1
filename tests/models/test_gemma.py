"""Gemma 3 and Gemma 2 text models: our logits equal transformers' (same weights, float32)."""

from __future__ import annotations

import pytest

from medvllm import LLM
from tests.engine_probe import check_against_hf
from tests.models.test_parity import prompts_of
from tests.tiny_models import GEMMA_ARCHS, build_tiny

TOL = 1e-4  # relative to the largest logit of each comparison


@pytest.fixture(
    scope="module",
    params=[(arch, impl) for arch in GEMMA_ARCHS for impl in ("auto", "sdpa")],
    ids=lambda p: f"{p[0]}-{p[1]}",
)
def tiny(request, tmp_path_factory):
    arch, impl = request.param
    folder = tmp_path_factory.mktemp(arch)
    model = build_tiny(arch, folder)
    llm = LLM(str(folder), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, attention_impl=impl)
    return arch, impl, folder, model, llm


def check(model, llm, prompts, **kwargs):
    return check_against_hf(model, llm, prompts, tol=TOL, relative=True, **kwargs)


def test_backends_follow_the_architecture(tiny):
    arch, impl, _, _, llm = tiny
    info = llm.runtime_info()
    assert info["architecture"] == ("Gemma2ForCausalLM" if arch == "gemma2" else "Gemma3ForCausalLM")
    # the fused CPU decoder layer runs Gemma 3's layer on the paged kernel; soft-capped scores (Gemma 2)
    # only run on PyTorch's path
    capped = arch == "gemma2"
    assert info["decode_layer"] == ("native" if impl == "auto" and not capped else "torch")
    assert info["attention_backend"] == ("cpu-paged" if impl == "auto" and not capped else "sdpa")
    if capped and impl == "auto":
        assert "soft-capped" in info["backend_reasons"]["attention"]


def test_batch_of_mixed_lengths_matches_transformers(tiny):
    _, _, _, model, llm = tiny
    check(model, llm, prompts_of([5, 17, 33, 40], seed=1), decode_steps=12)


def test_prefix_cache_hit_matches_transformers(tiny):
    _, _, _, model, llm = tiny
    first = prompts_of([40], seed=2)[0]
    check(model, llm, [first])
    second = first[:32] + prompts_of([7], seed=3)[0]  # shares two 16-token blocks
    outs = check(model, llm, [second])
    assert outs[0].metrics.num_cached_tokens == 32


def test_chunked_prompts_match_transformers(tiny):
    arch, impl, folder, model, _ = tiny
    llm = LLM(
        str(folder),
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        attention_impl=impl,
        max_num_seqs=2,
        max_num_batched_tokens=16,
    )
    check(model, llm, prompts_of([45, 30], seed=9))


def test_gemma3_in_float16_is_refused_naming_the_dtypes_that_work():
    """Refused where the model is known (backend selection); on CPU the Config already refuses float16."""
    from dataclasses import replace

    from transformers import Gemma2Config, Gemma3TextConfig

    from medvllm.backends.select import ModelTraits, select_backends
    from medvllm.config import Config, ConfigWarning
    from medvllm.errors import ConfigError
    from medvllm.hardware import GPUInfo, detect
    from medvllm.models.gemma2 import Gemma2ForCausalLM
    from medvllm.models.gemma3 import Gemma3ForCausalLM

    gpu = replace(detect(), gpus=(GPUInfo("fake", (8, 0), 40 << 30),))
    fp16 = Config(device="cuda", dtype="float16", attention_impl="sdpa", hardware=gpu)
    gemma3 = Gemma3TextConfig(**GEMMA_ARCHS["gemma3"][1])
    with pytest.raises(ConfigError, match="bfloat16.*float32") as err:
        select_backends(fp16, ModelTraits.of(gemma3, Gemma3ForCausalLM.arch_options(gemma3)))
    assert "\n" not in str(err.value)
    bf16 = Config(device="cuda", dtype="bfloat16", attention_impl="sdpa", hardware=gpu)
    assert select_backends(bf16, ModelTraits.of(gemma3, Gemma3ForCausalLM.arch_options(gemma3))).attention == "sdpa"
    forced = Config(device="cuda", dtype="float16", attention_impl="sdpa", force_float16=True, hardware=gpu)
    with pytest.warns(ConfigWarning, match="quality compare"):
        assert select_backends(forced, ModelTraits.of(gemma3, Gemma3ForCausalLM.arch_options(gemma3))).attention
    with pytest.warns(ConfigWarning, match="force_float16=true does nothing with dtype='bfloat16'"):
        Config(device="cuda", dtype="bfloat16", force_float16=True, hardware=gpu)
    gemma2 = Gemma2Config(head_dim=16)  # only Gemma 3 is refused
    assert select_backends(fp16, ModelTraits.of(gemma2, Gemma2ForCausalLM.arch_options(gemma2))).attention == "sdpa"
