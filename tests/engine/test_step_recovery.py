"""A step that raises fails only the requests in it: they finish with finish_reason 'error' (LLM.generate
and LLM.stream raise), their blocks go back, the prefix cache keeps none of the KV the step never wrote,
and the engine serves the next request."""

from __future__ import annotations

import pytest

from medvllm import LLM, SamplingParams
from medvllm.errors import StepError

LONG = list(range(3, 60))  # several full blocks: the failed prefill registers them for reuse
OTHER = [11, 12, 13, 14, 15]
GREEDY = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny("llama", folder)
    return LLM(str(folder), num_kvcache_blocks=64, max_model_len=128, kvcache_block_size=16)


def fail_once(monkeypatch, runner, exc: BaseException | None = None):
    exc = exc or RuntimeError("device lost")
    real = runner.run

    def run(*args, **kwargs):
        monkeypatch.setattr(runner, "run", real)
        raise exc

    monkeypatch.setattr(runner, "run", run)


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def idle_and_clean(engine, free_at_start):
    assert not engine.has_unfinished_requests()
    assert engine.scheduler.block_manager.num_free_blocks == free_at_start
    assert engine.stats()["kv_cache_usage"] == 0.0


def test_generate_raises_then_the_next_request_runs(llm, monkeypatch):
    engine = llm.engine
    expected = tokens(llm.generate([LONG, OTHER], GREEDY))
    assert llm.reset_prefix_cache()
    free = engine.scheduler.block_manager.num_free_blocks
    fail_once(monkeypatch, engine.runner)
    with pytest.raises(StepError, match="device lost") as err:
        llm.generate([LONG, OTHER], GREEDY)
    assert isinstance(err.value.__cause__, RuntimeError)
    idle_and_clean(engine, free)
    again = llm.generate([LONG, OTHER], GREEDY)
    assert tokens(again) == expected
    assert again[0].metrics.num_cached_tokens == 0  # the failed step's blocks were never offered for reuse


def test_stream_raises_then_the_next_request_runs(llm, monkeypatch):
    engine = llm.engine
    expected = tokens(llm.generate([OTHER], GREEDY))[0]
    free = engine.scheduler.block_manager.num_free_blocks
    stream = llm.stream(OTHER, GREEDY)
    first = next(stream)
    fail_once(monkeypatch, engine.runner)  # the next decode step fails
    with pytest.raises(StepError):
        list(stream)
    idle_and_clean(engine, free)
    assert first.outputs[0].token_ids == expected[:1]
    assert sum((o.outputs[0].delta_token_ids for o in llm.stream(OTHER, GREEDY)), []) == expected


def test_requests_outside_the_failing_step_are_unaffected(tmp_path_factory, monkeypatch):
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("tiny_unmixed")
    build_tiny("llama", folder)
    # prompts in steps of their own, so a's decoding is outside the step that fails
    llm = LLM(str(folder), num_kvcache_blocks=64, max_model_len=128, kvcache_block_size=16, mixed_prompt_tokens=0)
    engine = llm.engine
    expected = tokens(llm.generate([OTHER], GREEDY))[0]
    free = engine.scheduler.block_manager.num_free_blocks
    a = engine.add_request(OTHER, GREEDY)
    assert [o.request_id for o in engine.step()] == [a]  # a's prompt
    b = engine.add_request(LONG, GREEDY)
    fail_once(monkeypatch, engine.runner)
    failed = engine.step()  # prompts go first: b's prefill alone, and it fails
    assert [o.request_id for o in failed] == [b]
    out = failed[0]
    assert out.finished and out.outputs[0].finish_reason == "error" and isinstance(out.error, StepError)
    assert b in str(out.error)
    finals = {}
    while engine.has_unfinished_requests():
        for o in engine.step():
            assert o.error is None
            if o.finished:
                finals[o.request_id] = o
    assert list(finals) == [a] and finals[a].outputs[0].token_ids == expected
    idle_and_clean(engine, free)


def test_a_failing_mixed_step_fails_its_decodes_and_prompts_and_the_engine_goes_on(llm, monkeypatch):
    engine = llm.engine
    expected = tokens(llm.generate([OTHER], GREEDY))[0]
    free = engine.scheduler.block_manager.num_free_blocks
    a = engine.add_request(OTHER, GREEDY, stream=True)  # a stream decoding: the long prompt comes in mixed steps
    engine.step()  # a's prompt
    b = engine.add_request(LONG, GREEDY)
    fail_once(monkeypatch, engine.runner)
    failed = engine.step()  # a's decode token and b's prompt in one step
    assert sorted(o.request_id for o in failed) == sorted([a, b])
    assert all(o.finished and isinstance(o.error, StepError) for o in failed)
    idle_and_clean(engine, free)
    assert tokens(llm.generate([OTHER], GREEDY))[0] == expected


def test_an_interrupt_inside_a_step_still_cleans_up(llm, monkeypatch):
    engine = llm.engine
    free = engine.scheduler.block_manager.num_free_blocks
    fail_once(monkeypatch, engine.runner, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        llm.generate([LONG, OTHER], GREEDY)
    idle_and_clean(engine, free)
    assert len(tokens(llm.generate([OTHER], GREEDY))[0]) == 6
