"""Sampling parameters do what they say, on the real engine."""

from __future__ import annotations

import pytest
import torch

from medvllm import LLM, SamplingParams
from medvllm.errors import RequestError
from medvllm.layers.sampler import SamplingBatch, apply_penalties


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny("llama", folder)
    return LLM(str(folder), num_kvcache_blocks=128, max_model_len=128)


PROMPT = [5, 9, 17, 33, 65, 129, 200, 7]
OTHERS = [[11, 12, 13], [40] * 20, list(range(30, 70))]


def tokens(llm, prompts, params):
    return [o.outputs[0].token_ids for o in llm.generate(prompts, params)]


def test_seeded_sampling_is_independent_of_batch(tiny_llm):
    params = SamplingParams(temperature=1.0, seed=1234, max_tokens=20, ignore_eos=True)
    alone = tokens(tiny_llm, [PROMPT], params)[0]
    unseeded = SamplingParams(temperature=1.0, max_tokens=20, ignore_eos=True)
    batched = tiny_llm.generate([PROMPT] + OTHERS, [params] + [unseeded] * len(OTHERS))
    assert batched[0].outputs[0].token_ids == alone
    other_seed = SamplingParams(temperature=1.0, seed=99, max_tokens=20, ignore_eos=True)
    assert tokens(tiny_llm, [PROMPT], other_seed)[0] != alone


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(temperature=0.9, top_k=1, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=1e-6, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.9, min_p=1.0, max_tokens=12, ignore_eos=True),
    ],
    ids=["top_k=1", "top_p~0", "min_p=1"],
)
def test_filters_that_keep_one_token_equal_greedy(tiny_llm, params):
    greedy = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)
    assert tokens(tiny_llm, [PROMPT], params) == tokens(tiny_llm, [PROMPT], greedy)


def test_max_tokens_and_stop_token_ids(tiny_llm):
    greedy = tiny_llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True))[0]
    assert greedy.outputs[0].finish_reason == "length" and len(greedy.outputs[0].token_ids) == 10
    stop_id = greedy.outputs[0].token_ids[3]
    first = greedy.outputs[0].token_ids.index(stop_id)
    out = tiny_llm.generate(
        [PROMPT], SamplingParams(temperature=0, max_tokens=10, ignore_eos=True, stop_token_ids=[stop_id])
    )[0].outputs[0]
    assert out.token_ids == greedy.outputs[0].token_ids[: first + 1]
    assert out.finish_reason == "stop" and out.stop_reason == stop_id


def test_logprobs_hold_the_chosen_token_and_top_n(tiny_llm):
    out = tiny_llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6, logprobs=3, ignore_eos=True))[
        0
    ].outputs[0]
    assert len(out.logprobs) == 6
    for token, entry in zip(out.token_ids, out.logprobs):
        assert token in entry and 3 <= len(entry) <= 4
        assert entry[token] == pytest.approx(max(entry.values()))  # greedy picks the top one
        assert all(v <= 0 for v in entry.values())
    assert out.cumulative_logprob == pytest.approx(sum(e[t] for t, e in zip(out.token_ids, out.logprobs)))


def test_penalties_follow_their_definitions():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    batch = SamplingBatch(
        temperature=torch.ones(1),
        top_k=None,
        top_p=None,
        min_p=None,
        all_greedy=True,
        seeds=[None],
        output_tokens=torch.tensor([[3, 3, 4]]),  # 4 = padding
        repetition_penalty=torch.tensor([2.0]),
        presence_penalty=torch.tensor([0.5]),
        frequency_penalty=torch.tensor([0.25]),
        prompt_mask=torch.tensor([[False, True, False, False]]),
    )
    got = apply_penalties(logits.clone(), batch)
    # token 1: prompt only -> repetition (negative: * 2); token 3: output twice -> / 2, - 0.25*2, - 0.5
    expected = torch.tensor([[2.0, -2.0, 0.5, 3.0 / 2 - 0.5 - 0.5]])
    assert torch.allclose(got, expected)


def test_abort_frees_blocks_and_bad_requests_are_refused(tiny_llm):
    engine = tiny_llm.engine
    rid = engine.add_request(PROMPT, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.stats()["kv_cache_usage"] > 0
    engine.abort_request(rid)
    assert engine.stats()["kv_cache_usage"] == 0 and not engine.has_unfinished_requests()
    with pytest.raises(RequestError, match="exceeds max_model_len"):
        engine.add_request(list(range(3, 120)), SamplingParams(max_tokens=50))
    with pytest.raises(RequestError, match="empty"):
        engine.add_request([], SamplingParams())
    with pytest.raises(RequestError, match="top_p"):
        SamplingParams(top_p=0)


def test_stop_string_truncates_text(default_llm):
    ids = default_llm.encode_chat([{"role": "user", "content": "What is hypertension?"}])
    full = default_llm.generate([ids], SamplingParams(temperature=0, max_tokens=40))[0].outputs[0].text
    stop = full[20:26]
    out = default_llm.generate([ids], SamplingParams(temperature=0, max_tokens=40, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop" and out.stop_reason == stop
    assert out.text == full[: full.index(stop)]
    streamed = "".join(
        o.outputs[0].delta_text
        for o in default_llm.stream(ids, SamplingParams(temperature=0, max_tokens=40, stop=[stop]))
    )
    assert streamed == out.text
