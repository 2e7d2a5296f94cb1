"""Chunked prefill: prompts longer than max_num_batched_tokens run over several steps, and every logit
still equals transformers'; the split is invisible in the tokens and in the prefix cache."""

from __future__ import annotations

import pytest

from medvllm import LLM, SamplingParams
from tests.engine_probe import check_against_hf
from tests.tiny_models import build_tiny, random_prompts as prompts_of

BUDGET = 24  # tokens per step: a 100-token prompt takes five steps


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    model = build_tiny("llama", folder)
    return folder, model


def chunked(folder, **kw):
    return LLM(
        str(folder),
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        max_num_seqs=8,
        max_num_batched_tokens=BUDGET,
        **kw,
    )


@pytest.mark.parametrize("impl", ["auto", "sdpa"])
def test_prompts_longer_than_the_budget_match_transformers(tiny, impl):
    folder, model = tiny
    llm = chunked(folder, attention_impl=impl)
    steps = []
    schedule = llm.engine.scheduler.schedule

    prompt_tokens = []

    def noting_schedule():
        seqs, is_prefill = schedule()
        if is_prefill:  # a mixed step also carries decode tokens: the budget covers them too
            steps.append(sum((s.prefill_end or len(s)) - s.num_computed_tokens for s in seqs))
            prompt_tokens.extend(s.prefill_end - s.num_computed_tokens for s in seqs if s.num_output_tokens == 0)
        return seqs, is_prefill

    llm.engine.scheduler.schedule = noting_schedule
    prompts = prompts_of([100, 7, 45, 23], seed=1)
    # 100-token prompts: per unit of the largest logit (~2.8), where 1.4e-6 is usual but one CI host gave 1.42e-4
    check_against_hf(model, llm, prompts, relative=True)
    assert max(steps) <= BUDGET and sum(prompt_tokens) == sum(map(len, prompts))
    assert llm.engine.stats()["prefill_tokens_computed"] == sum(map(len, prompts))


def test_chunked_tokens_equal_unchunked_with_sampling_and_preemption(tiny):
    folder, _ = tiny
    prompts = prompts_of([90, 12, 61, 33, 70], seed=2)
    # no max_tokens: admitted optimistically, so the small pool must preempt (each runs to max_model_len)
    params = [
        SamplingParams(temperature=0, max_tokens=None, ignore_eos=True),
        SamplingParams(temperature=0.8, top_p=0.9, seed=5, max_tokens=None, ignore_eos=True),
    ]
    params = [params[i % 2] for i in range(len(prompts))]
    whole = LLM(
        str(folder), kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=128, max_num_batched_tokens=512
    )
    expected = [o.outputs[0].token_ids for o in whole.generate(prompts, params)]
    # a pool too small for all five at once: chunks and preemption together
    small = LLM(
        str(folder),
        kvcache_block_size=8,
        num_kvcache_blocks=24,
        max_model_len=128,
        max_num_seqs=8,
        max_num_batched_tokens=BUDGET,
    )
    outs = small.generate(prompts, params)
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert small.engine.stats()["num_preemptions"] > 0
    assert small.engine.stats()["kv_cache_usage"] == 0.0


def test_a_chunked_prompt_fills_the_prefix_cache_for_the_next_request(tiny):
    folder, model = tiny
    llm = chunked(folder)
    first = prompts_of([80], seed=3)[0]
    check_against_hf(model, llm, [first])
    second = first[:64] + prompts_of([9], seed=4)[0]  # four full blocks computed over several chunks
    outs = check_against_hf(model, llm, [second])
    assert outs[0].metrics.num_cached_tokens == 64


def test_max_model_len_is_no_longer_bounded_by_the_step_budget(tiny):
    folder, _ = tiny
    llm = chunked(folder)
    assert llm.engine.max_model_len == 256 > BUDGET
    out = llm.generate([prompts_of([200], seed=5)[0]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
