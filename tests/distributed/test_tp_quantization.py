"""Quantization runs per shard: each tensor-parallel rank quantizes the slice of each layer it holds."""

from __future__ import annotations

import torch

from medvllm import LLM, SamplingParams
from tests.engine_probe import LogitsRecorder
from tests.tiny_models import build_tiny

ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu")


def hf_last_logits(model, token_ids):
    with torch.no_grad():
        return model(torch.tensor([token_ids])).logits[0, -1].float()


def test_dynamic_int8_quantizes_each_shard(tmp_path):
    """Each rank quantizes its own slice: TP=2 int8 stays as close to the float model as TP=1 int8 does."""
    hf = build_tiny("llama", tmp_path)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(3, 256, (n,), generator=g).tolist() for n in (5, 17, 33)]
    first = SamplingParams(temperature=0, max_tokens=1)

    def prefill_error(llm):
        recorder = LogitsRecorder(llm.engine)
        outs = llm.generate(prompts, first)
        return max(
            (recorder.logits_of(o.request_id)[0] - hf_last_logits(hf, p)).abs().max().item()
            for p, o in zip(prompts, outs)
        )

    one = LLM(str(tmp_path), quantization_method="dynamic", **ENGINE)
    two = LLM(str(tmp_path), quantization_method="dynamic", tensor_parallel_size=2, **ENGINE)
    try:
        assert two.runtime_info()["quantization"]["layers"] == one.runtime_info()["quantization"]["layers"] == 8
        error_one, error_two = prefill_error(one), prefill_error(two)
    finally:
        two.engine.shutdown()
    assert 0 < error_two <= 2 * error_one + 1e-3, (error_one, error_two)


def _tiny_gguf(tmp_path, intermediate):
    import transformers
    from gguf import GGMLQuantizationType as Q

    from tests.loader.test_gguf_tiny import SMALL, write_gguf

    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{**SMALL, "intermediate_size": intermediate}, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(config)
    return str(write_gguf(tmp_path / "tiny.gguf", model, "llama", Q.Q8_0))


def test_gguf_blocks_split_across_ranks_on_block_boundaries(tmp_path):
    """Row-parallel layers split their inputs by whole blocks: TP=2 computes what TP=1 does on the same
    blocks (the same per-block activation rounding), up to the order of the float sums."""
    path = _tiny_gguf(tmp_path, 128)  # down_proj's 128 inputs: 64 a rank, two Q8_0 blocks each
    prompt = list(range(3, 40))
    one = LLM(path, quantization_method="gguf", **ENGINE)
    two = LLM(path, quantization_method="gguf", tensor_parallel_size=2, **ENGINE)
    try:
        logits_one, logits_two = one.engine.score(prompt), two.engine.score(prompt)
    finally:
        two.engine.shutdown()
    assert torch.allclose(logits_one, logits_two, atol=1e-4, rtol=1e-4)


def test_gguf_refuses_a_split_inside_a_block(tmp_path):
    import pytest

    from medvllm.errors import ModelLoadError

    path = _tiny_gguf(tmp_path, 96)  # 48 inputs a rank: not whole blocks of 32
    with pytest.raises((ModelLoadError, RuntimeError), match="cannot be split into inputs 0..47"):
        LLM(path, quantization_method="gguf", tensor_parallel_size=2, **ENGINE)
