"""scheduling_policy='priority': an urgent request (lower `priority`) that arrives behind a full queue
runs next, preempting the least urgent running request when seats or KV blocks are short; every request
still gets the tokens it gets alone. fcfs ignores priority."""

from __future__ import annotations

import pytest
import torch

from medvllm import LLM, SamplingParams
from medvllm.errors import RequestError
from tests.tiny_models import build_tiny

GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    build_tiny("llama", path)
    return path


def prompts_of(n, seed, length=12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (length,), generator=g).tolist() for _ in range(n)]


def engine_of(folder, policy, **kw):
    settings = dict(kvcache_block_size=8, num_kvcache_blocks=64, max_model_len=64, max_num_seqs=2)
    return LLM(str(folder), scheduling_policy=policy, **(settings | kw)).engine


def first_steps(engine, queued, urgent, priorities, steps=2):
    """Queues `queued` (priorities[i]), runs two steps, adds `urgent` at priority 0, returns who ran in
    each following step and the final tokens by request id."""
    ran: list[list[str]] = []
    schedule = engine.scheduler.schedule

    def noting():
        seqs, is_prefill = schedule()
        ran.append([s.request_id for s in seqs])
        return seqs, is_prefill

    engine.scheduler.schedule = noting
    # streamed, as a server's clients would be: the urgent prompt then shares its step with their tokens
    ids = [engine.add_request(p, GREEDY, priority=r, stream=True) for p, r in zip(queued, priorities)]
    for _ in range(steps):
        engine.step()
    urgent_id = engine.add_request(urgent, GREEDY, priority=0, stream=True)
    finals = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                finals[out.request_id] = out.outputs[0].token_ids
    return ids, urgent_id, ran[steps:], finals


def alone(folder, prompts):
    return [o.outputs[0].token_ids for o in LLM(str(folder), max_model_len=64).generate(prompts, GREEDY)]


def started(ran, request_id) -> int:
    return next(i for i, step in enumerate(ran) if request_id in step)


def test_urgent_request_behind_a_full_queue_runs_next_and_preempts_the_least_urgent(folder):
    queued, urgent = prompts_of(6, seed=1), prompts_of(1, seed=2)[0]
    engine = engine_of(folder, "priority")
    # two seats: priorities 5 and 6 run, four more at 6 wait behind them (equals never preempt)
    ids, urgent_id, ran, finals = first_steps(engine, queued, urgent, [6, 5, 6, 6, 6, 6])
    assert urgent_id in ran[0]  # the very next step, ahead of the four that waited longer
    assert ids[0] not in ran[0] and ids[1] in ran[0]  # the least urgent (6) gave its seat up, not the newest
    assert engine.stats()["num_preemptions"] == 1
    # the preempted request then resumes first among its equals (it came first)
    order = [started(ran, r) for r in [ids[0]] + ids[2:]]
    assert order == sorted(order)
    assert [finals[i] for i in ids + [urgent_id]] == alone(folder, queued + [urgent])


def test_urgent_request_preempts_the_least_urgent_when_kv_blocks_run_short(folder):
    queued, urgent = prompts_of(2, seed=3, length=20), prompts_of(1, seed=4, length=20)[0]
    # seats for all, but 13 blocks of 8 tokens hold two requests' 20 + 24 tokens, not three
    engine = engine_of(folder, "priority", max_num_seqs=8, num_kvcache_blocks=13)
    ids, urgent_id, ran, finals = first_steps(engine, queued, urgent, [8, 4])
    assert urgent_id in ran[0]
    assert ids[0] not in ran[0] and ids[1] in ran[0]  # priority 8 is preempted, not the newest (4)
    assert engine.stats()["num_preemptions"] == 1
    assert engine.scheduler.block_manager.num_free_blocks == 13
    assert [finals[i] for i in ids + [urgent_id]] == alone(folder, queued + [urgent])


def test_fcfs_ignores_priority(folder):
    queued, urgent = prompts_of(6, seed=1), prompts_of(1, seed=2)[0]
    engine = engine_of(folder, "fcfs")
    ids, urgent_id, ran, _ = first_steps(engine, queued, urgent, [6, 5, 6, 6, 6, 6])
    assert all(started(ran, r) <= started(ran, urgent_id) for r in ids[2:])  # everyone before it started
    assert engine.stats()["num_preemptions"] == 0


def test_generate_takes_one_priority_per_prompt(folder):
    llm = LLM(str(folder), max_model_len=64, scheduling_policy="priority", max_num_seqs=1)
    prompts = prompts_of(3, seed=5)
    outs = llm.generate(prompts, GREEDY, priority=[2, 0, 1])
    firsts = [o.metrics.first_token_time for o in outs]
    assert firsts[1] < firsts[2] < firsts[0]  # one seat: the most urgent ran first
    with pytest.raises(RequestError, match="one per prompt"):
        llm.generate(prompts, GREEDY, priority=[1])
    with pytest.raises(RequestError, match="priority"):
        llm.engine.add_request(prompts[0], GREEDY, priority="high")
