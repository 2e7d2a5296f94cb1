"""Mixed steps: while requests decode, a long prompt that arrives is spread over steps that also carry
every decode token, under the budget; every logit still equals transformers' and every token the
unmixed engine's (prompts in steps of their own)."""

from __future__ import annotations

import pytest

from medvllm import LLM, SamplingParams
from tests.engine_probe import LogitsRecorder, hf_logits
from tests.tiny_models import build_tiny, random_prompts as prompts_of

PROMPT_BUDGET = 16  # prompt tokens beside the decodes of a mixed step
STEP_BUDGET = 32  # max_num_batched_tokens: every step, decodes included
GREEDY = SamplingParams(temperature=0, max_tokens=12, ignore_eos=True)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    return folder, build_tiny("llama", folder)


def engine_of(folder, mixed: int, **kw):
    settings = dict(kvcache_block_size=16, num_kvcache_blocks=96, max_model_len=256, max_num_seqs=8)
    return LLM(str(folder), max_num_batched_tokens=STEP_BUDGET, mixed_prompt_tokens=mixed, **(settings | kw))


def streams_then_long_prompts(engine, short, long, params=GREEDY, stream_params=None, stream=True):
    """The short prompts start decoding (streamed, unless `stream` is False); the long ones arrive two
    steps later. Returns every step's (decoding request ids, {request id: prompt tokens}) and the final
    outputs by request id."""
    steps, finals = [], {}
    schedule = engine.scheduler.schedule

    def noting():
        seqs, is_prefill = schedule()
        decodes = [s.request_id for s in seqs if not is_prefill or s.num_computed_tokens == len(s) - 1]
        chunks = {s.request_id: s.prefill_end - s.num_computed_tokens for s in seqs if s.request_id not in decodes}
        steps.append((decodes, chunks))
        return seqs, is_prefill

    engine.scheduler.schedule = noting
    ids = [engine.add_request(p, stream_params or params, stream=stream) for p in short]
    for _ in range(3):
        engine.step()
    ids += [engine.add_request(p, params) for p in long]
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out.outputs[0].token_ids
    return ids, steps, finals


@pytest.mark.parametrize("impl", ["auto", "sdpa"])  # the native paged kernel and fused layer / SDPA
def test_streams_keep_decoding_while_a_long_prompt_is_spread_over_mixed_steps(tiny, impl):
    folder, model = tiny
    llm = engine_of(folder, PROMPT_BUDGET, attention_impl=impl)
    engine = llm.engine
    recorder = LogitsRecorder(engine)
    short, long = prompts_of([5, 9, 12], seed=4), prompts_of([100, 70], seed=5)
    streaming = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)  # outlasts the long prompts' prefill
    ids, steps, finals = streams_then_long_prompts(engine, short, long, stream_params=streaming)
    streams = ids[:3]
    mixed = [(d, c) for d, c in steps if d and c]
    assert len(mixed) >= (100 + 70) // PROMPT_BUDGET  # both long prompts went through mixed steps
    for decodes, chunks in steps:
        assert sum(chunks.values()) + len(decodes) <= STEP_BUDGET
        if decodes:
            assert sum(chunks.values()) <= PROMPT_BUDGET
    # no stream missed a step while the long prompts were prefilled
    while_prefilling = [d for d, c in steps[3:] if set(c) & set(ids[3:])]
    assert len(while_prefilling) >= 5
    busy = [s for s in streams if all(s in d for d in while_prefilling)]
    assert busy == streams  # each stream got a token in every step that also carried a long prompt's chunk
    assert engine.stats()["mixed_steps"] == len(mixed)
    # every step's logits are transformers' on the same tokens
    for request_id, prompt in zip(ids, short + long):
        ours = recorder.logits_of(request_id)
        ref = hf_logits(model, prompt + finals[request_id][:-1])[len(prompt) - 1 :]
        assert ours.shape == ref.shape
        assert (ours - ref).abs().max().item() < 1e-4 * max(1.0, ref.abs().max().item())


def test_mixed_tokens_equal_the_unmixed_engine_with_sampling_chunks_and_preemption(tiny):
    folder, _ = tiny
    short, long = prompts_of([6, 14, 21, 3], seed=6), prompts_of([90, 45, 120], seed=7)
    params = SamplingParams(temperature=0.8, top_p=0.9, seed=3, max_tokens=20, ignore_eos=True)
    results = []
    for mixed in (0, PROMPT_BUDGET):
        for greedy in (GREEDY, params):
            engine = engine_of(folder, mixed).engine
            ids, steps, finals = streams_then_long_prompts(engine, short, long, greedy)
            results.append([finals[i] for i in ids])
            assert any(d and c for d, c in steps) == bool(mixed)
    assert results[0] == results[2] and results[1] == results[3]
    # a pool too small for all of them: mixed steps and preemption together
    small = LLM(
        str(folder),
        kvcache_block_size=8,
        num_kvcache_blocks=24,
        max_model_len=160,
        max_num_seqs=8,
        max_num_batched_tokens=STEP_BUDGET,
        mixed_prompt_tokens=PROMPT_BUDGET,
    ).engine
    unbounded = SamplingParams(temperature=0, max_tokens=None, ignore_eos=True)
    ids, _, finals = streams_then_long_prompts(small, short, long[:2], unbounded)
    large = engine_of(folder, 0, max_model_len=160).engine
    ids_large, _, finals_large = streams_then_long_prompts(large, short, long[:2], unbounded)
    assert small.stats()["num_preemptions"] > 0 and small.stats()["mixed_steps"] > 0
    assert [finals[i] for i in ids] == [finals_large[i] for i in ids_large]


def test_no_waiting_prompt_keeps_decode_steps_on_their_own_path(tiny):
    folder, _ = tiny
    engine = engine_of(folder, PROMPT_BUDGET).engine
    kinds = []
    schedule = engine.scheduler.schedule

    def noting():
        seqs, is_prefill = schedule()
        kinds.append(is_prefill)
        return seqs, is_prefill

    engine.scheduler.schedule = noting
    for p in prompts_of([5, 9], seed=8):
        engine.add_request(p, GREEDY)
    while engine.has_unfinished_requests():
        engine.step()
    assert kinds[0] and not any(kinds[1:])  # one prompt step, then decode steps only
    assert engine.stats()["mixed_steps"] == 0


def test_without_a_stream_decoding_prompts_go_first_as_before(tiny):
    """Requests answered whole are judged by when they finish: waiting prompts then take whole prompt
    steps (batch throughput as before mixed steps), and the tokens are the same."""
    folder, _ = tiny
    short, long = prompts_of([6, 14], seed=9), prompts_of([90, 45], seed=10)
    engine = engine_of(folder, PROMPT_BUDGET).engine
    ids, steps, finals = streams_then_long_prompts(engine, short, long, stream=False)
    assert not any(d and c for d, c in steps) and engine.stats()["mixed_steps"] == 0
    streamed = engine_of(folder, PROMPT_BUDGET).engine
    ids_s, steps_s, finals_s = streams_then_long_prompts(streamed, short, long)
    assert any(d and c for d, c in steps_s)
    assert [finals[i] for i in ids] == [finals_s[i] for i in ids_s]
