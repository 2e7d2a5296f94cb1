"""A KV pool too small for every request at once: all still finish, with the large-pool tokens.

Requests that say how long they may grow (max_tokens) are admitted only while their growth fits, so
they never need preempting; requests without a limit are admitted optimistically and preempted (and
recomputed) when the pool runs out."""

from __future__ import annotations

import torch

from medvllm import LLM, SamplingParams


def _prompts_and_params(max_tokens):
    g = torch.Generator().manual_seed(3)
    prompts = [
        torch.randint(3, 256, (int(n),), generator=g).tolist() for n in torch.randint(10, 40, (10,), generator=g)
    ]
    params = [
        SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=max_tokens, ignore_eos=True),
    ]
    return prompts, [params[i % 2] for i in range(len(prompts))]


def _small_and_large(folder, max_tokens):
    prompts, params = _prompts_and_params(max_tokens)
    large = LLM(str(folder), num_kvcache_blocks=256, max_model_len=80)
    expected = [o.outputs[0].token_ids for o in large.generate(prompts, params)]
    small = LLM(str(folder), num_kvcache_blocks=16, max_model_len=80, kvcache_block_size=8)
    outs = small.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert small.engine.stats()["kv_cache_usage"] == 0.0
    return small.engine.stats(), prompts, expected


def test_small_pool_preempts_unbounded_requests_and_every_one_matches_large_pool(tmp_path):
    from tests.tiny_models import build_tiny

    build_tiny("llama", tmp_path)
    stats, prompts, expected = _small_and_large(tmp_path, max_tokens=None)  # each runs to max_model_len
    assert stats["num_preemptions"] > 0
    assert [len(t) for t in expected] == [80 - len(p) for p in prompts]


def test_small_pool_admits_bounded_requests_as_their_growth_fits_and_never_preempts(tmp_path):
    from tests.tiny_models import build_tiny

    build_tiny("llama", tmp_path)
    stats, _, expected = _small_and_large(tmp_path, max_tokens=40)
    assert stats["num_preemptions"] == 0
    assert all(len(t) == 40 for t in expected)
