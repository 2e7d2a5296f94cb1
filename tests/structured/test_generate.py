"""Constrained generation on the real default model, checked against oracles: Python's `re` for regex
and choice outputs, `jsonschema` for JSON, and the model's own unconstrained greedy answer."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest

from medvllm import LLM, SamplingParams
from medvllm.engine.sequence import Sequence
from medvllm.errors import RequestError
from medvllm.layers.sampler import unpack_bitmask
from medvllm.structured import StructuredOutputsParams as SO
from medvllm.structured.masks import MaskBuilder

NOTE = "Patient on lisinopril 10 mg by mouth once daily; BP 150/95, HR 88."
REGEX = r"(BP|HR) \d{2,3}(/\d{2,3})? (mmHg|bpm)"
CHOICE = ["emergent", "urgent", "less urgent", "non-urgent"]
SCHEMA = {
    "type": "object",
    "properties": {
        "drug": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 20},
        "dose": {"type": "number", "minimum": 0, "maximum": 1000},
        "unit": {"enum": ["mg", "mcg", "g"]},
    },
    "required": ["drug", "dose", "unit"],
    "additionalProperties": False,
}


def _chat(llm, text: str) -> list[int]:
    return llm.encode_chat([{"role": "user", "content": text}])


def _params(so, temperature, seed=None, **kw) -> SamplingParams:
    kw.setdefault("max_tokens", 64)
    return SamplingParams(temperature=temperature, seed=seed, structured_outputs=so, **kw)


@pytest.mark.parametrize("temperature,seeds", [(0.0, [None]), (0.8, [1, 2, 3])])
def test_regex_choice_and_json_outputs_match_their_oracles_in_a_mixed_batch(default_llm, temperature, seeds):
    prompt = _chat(default_llm, f"Read the note and answer. {NOTE}")
    prompts, params = [], []
    for seed in seeds:
        for so in (SO(regex=REGEX), SO(choice=CHOICE), SO(json=SCHEMA), None):
            prompts.append(prompt)
            params.append(_params(so, temperature, seed) if so else SamplingParams(temperature=0, max_tokens=8))
    outs = default_llm.generate(prompts, params)
    for out, p in zip(outs, params):
        c = out.outputs[0]
        so = p.structured_outputs
        if so is None:
            assert c.finish_reason == "length"  # the free request beside them ran as usual
            continue
        assert c.finish_reason == "stop", (so.kind, c.text)
        if so.regex:
            assert re.fullmatch(REGEX, c.text), c.text
        elif so.choice:
            assert c.text in CHOICE
        else:
            jsonschema.validate(json.loads(c.text), SCHEMA)


def test_constrained_greedy_equals_free_greedy_when_the_free_answer_satisfies_it(default_llm):
    prompt = _chat(default_llm, "In one word, which organ does hepatitis affect?")
    free = default_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12))[0].outputs[0]
    assert free.text
    for so in (SO(regex=re.escape(free.text)), SO(choice=[free.text, "kidney"]), SO(regex=r"[\s\S]{0,200}")):
        c = default_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, structured_outputs=so))[0]
        # a complete grammar ends the request at once: the free run's closing EOS may not be sampled
        assert c.outputs[0].text == free.text, so
        assert c.outputs[0].token_ids == free.token_ids[: len(c.outputs[0].token_ids)], so
        assert len(free.token_ids) - len(c.outputs[0].token_ids) in (0, 1)


def test_stream_and_stop_strings_keep_the_constraint(default_llm):
    prompt = _chat(default_llm, f"Give the blood pressure. {NOTE}")
    params = _params(SO(regex=REGEX), 0.8, seed=5)
    deltas, final = [], None
    for out in default_llm.stream(prompt, params):
        deltas.append(out.outputs[0].delta_text)
        final = out
    assert "".join(deltas) == final.outputs[0].text and re.fullmatch(REGEX, final.outputs[0].text)
    cut = default_llm.generate(prompt, _params(SO(choice=["BP high", "BP normal"]), 0, stop=[" "]))[0].outputs[0]
    assert cut.text == "BP" and cut.finish_reason == "stop"


def test_a_grammar_completes_and_eos_is_allowed_only_where_it_can_end(default_llm):
    lark = 'start: "Triage: " level "."\nlevel: "1" | "2" | "3" | "4" | "5"'
    prompt = _chat(default_llm, f"Triage this patient. {NOTE}")
    outs = default_llm.generate([prompt] * 3, [_params(SO(grammar=lark), 1.0, seed=s) for s in range(3)])
    assert all(re.fullmatch(r"Triage: [1-5]\.", o.outputs[0].text) for o in outs)
    # EOS: forbidden before a digit, allowed after one (the engine's EOS is the tokenizer's)
    state = default_llm.engine.grammars.state_for(SO(regex=r"[0-9]+"))
    eos = default_llm.tokenizer.eos_token_id
    seq = Sequence("probe", None, [1, 2, 3], SamplingParams(), 16)
    builder = MaskBuilder(default_llm.engine.runner.vocab_size, threads=1)
    allowed = [unpack_bitmask(builder.start([(0, state, seq)]).result()[1], 49152)[0]]
    seq.append_token(default_llm.tokenizer.convert_tokens_to_ids("7"))
    allowed.append(unpack_bitmask(builder.start([(0, state, seq)]).result()[1], 49152)[0])
    assert not allowed[0][eos] and allowed[1][eos]
    digits = default_llm.generate(prompt, _params(SO(regex=r"[0-9]{1,3}"), 1.2, seed=9))[0].outputs[0]
    assert re.fullmatch(r"[0-9]{1,3}", digits.text) and digits.finish_reason == "stop"


def test_grammars_are_compiled_once_per_constraint(default_llm):
    grammars = default_llm.engine.grammars
    so = SO(json={"type": "object", "properties": {"cached": {"type": "boolean"}}, "required": ["cached"]})
    before = grammars.num_compiled
    default_llm.generate(["a", "b"], _params(so, 0))
    default_llm.generate(["c"], _params(SO(json=dict(so.json)), 0))  # an equal schema, another object
    assert grammars.num_compiled == before + 1


@pytest.mark.parametrize(
    "so,named",
    [
        (SO(regex="a(b"), "unclosed group"),
        (SO(json={"type": "array", "uniqueItems": True}), "uniqueItems"),
        (SO(json={"type": "strin"}), "strin"),
        (SO(grammar="start: undefined_rule"), "undefined_rule"),
    ],
)
def test_a_bad_constraint_is_refused_before_it_is_queued(default_llm, so, named):
    with pytest.raises(RequestError, match=re.escape(named)):
        default_llm.engine.add_request("hello", _params(so, 0))
    assert not default_llm.engine.has_unfinished_requests()


def test_the_params_shape_is_checked():
    with pytest.raises(RequestError, match="exactly one"):
        SO(regex="a", choice=["b"])
    with pytest.raises(RequestError, match="exactly one"):
        SO()
    with pytest.raises(RequestError, match="choice"):
        SO(choice=[])
    assert SamplingParams(structured_outputs={"json_object": True}).structured_outputs.kind == "json_object"
    with pytest.raises(RequestError, match="structured_outputs"):
        SamplingParams(structured_outputs={"jsn": {}})


def test_preemption_and_chunked_prompts_give_the_same_constrained_tokens(default_llm):
    """A pool too small for all requests (recomputed after preemption) and prompts split over steps."""
    regex = r"(\d,){40}"  # long outputs, so that running requests outgrow the pool
    prompts = [_chat(default_llm, f"Case {i}: list digits.") for i in range(3)]
    params = [_params(SO(regex=regex), t, seed=s, max_tokens=None) for t, s in [(0, None), (0.8, 1), (1.0, 2)]]
    expected = [o.outputs[0].token_ids for o in default_llm.generate(prompts, params)]
    small = LLM(
        max_model_len=160, num_kvcache_blocks=20, kvcache_block_size=8, max_num_batched_tokens=16, max_num_seqs=8
    )
    outs = small.generate(prompts, params)
    assert small.engine.stats()["num_preemptions"] > 0
    assert [o.outputs[0].token_ids for o in outs] == expected
    assert all(re.fullmatch(regex, o.outputs[0].text) for o in outs)
