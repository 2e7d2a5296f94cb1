"""Prompt forms: str, token ids and vLLM's prompt dicts are accepted; anything else is a RequestError at
add_request, and a refused prompt leaves nothing behind in the engine."""

from __future__ import annotations

import pytest

from medvllm import LLM, SamplingParams
from medvllm.errors import RequestError
from tests.tiny_models import VOCAB

IDS = [5, 9, 17, 33, 65, 129, 200, 7]
TEXT = "w5 w9 w17 w33"
GREEDY = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("tiny")
    build_tiny("llama", folder)
    return LLM(str(folder), num_kvcache_blocks=64, max_model_len=128)


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_prompt_dicts_give_the_same_tokens_as_plain_prompts(llm):
    plain = tokens(llm.generate([IDS, TEXT], GREEDY))
    assert tokens(llm.generate({"prompt_token_ids": IDS}, GREEDY)) == plain[:1]
    assert tokens(llm.generate({"prompt": TEXT}, GREEDY)) == plain[1:]
    mixed = llm.generate([{"prompt": TEXT}, IDS, {"prompt_token_ids": tuple(IDS)}, TEXT], GREEDY)
    assert tokens(mixed) == [plain[1], plain[0], plain[0], plain[1]]
    assert mixed[0].prompt == TEXT and mixed[2].prompt_token_ids == IDS
    streamed = [o.outputs[0].delta_token_ids for o in llm.stream({"prompt_token_ids": IDS}, GREEDY)]
    assert sum(streamed, []) == plain[0]
    rid = llm.engine.add_request({"prompt": TEXT}, GREEDY)
    llm.engine.abort_request(rid)


def test_cache_salt_keeps_prefix_blocks_apart(llm):
    long = list(range(3, 60))
    llm.reset_prefix_cache()
    first = llm.generate({"prompt_token_ids": long, "cache_salt": "a"}, GREEDY)[0]
    same = llm.generate({"prompt_token_ids": long, "cache_salt": "a"}, GREEDY)[0]
    other = llm.generate({"prompt_token_ids": long, "cache_salt": "b"}, GREEDY)[0]
    assert other.metrics.num_cached_tokens == 0 and same.metrics.num_cached_tokens > 0
    assert tokens([first]) == tokens([other]) == tokens([same])


@pytest.mark.parametrize(
    "prompt, match",
    [
        ({"prompt": 5}, "'prompt' must be a str"),
        ({"prompt_token_ids": "w5 w9"}, "'prompt_token_ids' must be a list of ints"),
        ({"prompt": TEXT, "prompt_token_ids": IDS}, "exactly one of"),
        ({}, "exactly one of"),
        ({"prompt": TEXT, "multi_modal_data": {}}, "'multi_modal_data' is not supported"),
        ({"prompt": TEXT, "cache_salt": ""}, "cache_salt"),
        ("", "empty"),
        ([], "empty"),
        ({"prompt_token_ids": []}, "empty"),
        ([[5, 9], [17]], "position 0 is a list"),
        ([5, True], "position 1 is a bool"),
        ([5, 9.0], "position 1 is a float"),
        ([5, -1], "id -1 at position 1 is outside the vocabulary"),
        ([5, VOCAB], f"id {VOCAB} at position 1 is outside the vocabulary"),
        (None, "NoneType"),
        (b"w5", "bytes"),
        (42, "int"),
    ],
)
def test_bad_prompts_are_refused_at_add_request(llm, prompt, match):
    engine = llm.engine
    with pytest.raises(RequestError, match=match) as err:
        engine.add_request(prompt, GREEDY)
    assert "\n" not in str(err.value)
    assert not engine.has_unfinished_requests()


def test_bad_sampling_params_object_is_refused(llm):
    with pytest.raises(RequestError, match="SamplingParams"):
        llm.engine.add_request(IDS, {"temperature": 0})


def test_a_refused_prompt_in_a_batch_leaves_nothing_behind(llm):
    before = llm.engine.scheduler.block_manager.num_free_blocks
    with pytest.raises(RequestError, match="outside the vocabulary"):
        llm.generate([IDS, [5, VOCAB + 3]], GREEDY)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.scheduler.block_manager.num_free_blocks == before
    assert len(tokens(llm.generate([IDS], GREEDY))[0]) == 4
