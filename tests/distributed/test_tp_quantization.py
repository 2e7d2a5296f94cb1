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
