"""A KV pool too small for every request at once: all still finish, with the large-pool tokens."""
from __future__ import annotations

import torch

from medvllm import LLM, SamplingParams


def test_small_pool_preempts_and_every_request_matches_large_pool(tmp_path):
    from tiny_models import build_tiny
    build_tiny("llama", tmp_path)
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (int(n),), generator=g).tolist()
               for n in torch.randint(10, 40, (10,), generator=g)]
    params = [SamplingParams(temperature=0, max_tokens=40, ignore_eos=True),
              SamplingParams(temperature=0.8, top_p=0.9, seed=11, max_tokens=40, ignore_eos=True)]
    params = [params[i % 2] for i in range(len(prompts))]

    large = LLM(str(tmp_path), num_kvcache_blocks=256, max_model_len=80)
    expected = [o.outputs[0].token_ids for o in large.generate(prompts, params)]

    small = LLM(str(tmp_path), num_kvcache_blocks=16, max_model_len=80, kvcache_block_size=8)
    outs = small.generate(prompts, params)
    assert small.engine.stats()["num_preemptions"] > 0
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert all(len(t) == 40 for t in expected)
    assert small.engine.stats()["kv_cache_usage"] == 0.0
