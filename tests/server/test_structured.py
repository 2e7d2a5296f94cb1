"""Structured outputs over real HTTP with the official openai client, on the real default model:
response_format, vLLM's guided fields and forced tool calls, checked with jsonschema and re."""

from __future__ import annotations

import json
import re

import httpx
import jsonschema
import openai
import pytest

from medvllm.server import ServerSettings
from tests.server.tiny_server import ThreadServer

VITALS = {
    "type": "object",
    "properties": {
        "heart_rate": {"type": "integer", "minimum": 20, "maximum": 250},
        "systolic": {"type": "integer", "minimum": 50, "maximum": 260},
        "rhythm": {"enum": ["regular", "irregular"]},
    },
    "required": ["heart_rate", "systolic", "rhythm"],
    "additionalProperties": False,
}
NOTE = "Vitals: HR 112 irregular, BP 168/94. Return the vitals."
TOOL = {"type": "function", "function": {"name": "record_vitals", "parameters": VITALS}}
OTHER = {
    "type": "function",
    "function": {
        "name": "triage",
        "parameters": {"type": "object", "properties": {"level": {"enum": [1, 2, 3, 4, 5]}}, "required": ["level"]},
    },
}


@pytest.fixture(scope="module")
def server():
    from medvllm import LLM

    srv = ThreadServer(ServerSettings(), lambda: LLM(max_model_len=2048, max_num_batched_tokens=2048).engine)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "/v1", api_key="none", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def _messages():
    return [{"role": "user", "content": NOTE}]


def test_response_format_json_schema_and_json_object_validate(client, model):
    rf = {"type": "json_schema", "json_schema": {"name": "vitals", "schema": VITALS, "strict": True}}
    r = client.chat.completions.create(
        model=model, messages=_messages(), response_format=rf, n=2, temperature=0.8, seed=4, max_tokens=200
    )
    for c in r.choices:
        assert c.finish_reason == "stop"
        jsonschema.validate(json.loads(c.message.content), VITALS)
    parts = client.chat.completions.create(
        model=model, messages=_messages(), response_format=rf, temperature=0, max_tokens=200, stream=True
    )
    text = "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    jsonschema.validate(json.loads(text), VITALS)
    obj = client.chat.completions.create(
        model=model, messages=_messages(), response_format={"type": "json_object"}, temperature=0, max_tokens=300
    )
    assert obj.choices[0].finish_reason == "stop" and isinstance(json.loads(obj.choices[0].message.content), dict)


def test_vllm_guided_fields_on_completions(client, model):
    r = client.completions.create(
        model=model, prompt=NOTE + " Heart rate:", max_tokens=10, extra_body={"guided_regex": r" \d{2,3} bpm"}
    )
    assert re.fullmatch(r" \d{2,3} bpm", r.choices[0].text)
    choices = ["regular", "irregular"]
    r = client.completions.create(
        model=model, prompt=NOTE + " Rhythm:", max_tokens=10, n=3, seed=1, extra_body={"guided_choice": choices}
    )
    assert all(c.text in choices for c in r.choices)
    r = client.completions.create(
        model=model, prompt=NOTE, max_tokens=200, temperature=0, extra_body={"structured_outputs": {"json": VITALS}}
    )
    jsonschema.validate(json.loads(r.choices[0].text), VITALS)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "record_vitals"}}])
def test_forced_tool_calls_whole_and_streamed(client, model, tool_choice):
    kw = dict(model=model, messages=_messages(), tools=[TOOL, OTHER], tool_choice=tool_choice, max_tokens=200)
    whole = client.chat.completions.create(temperature=0, **kw).choices[0]
    call = whole.message.tool_calls[0]
    assert whole.message.content is None
    assert whole.finish_reason == ("tool_calls" if tool_choice == "required" else "stop")
    schema = {"record_vitals": VITALS, "triage": OTHER["function"]["parameters"]}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), schema)
    name, args, finish = None, "", None
    for part in client.chat.completions.create(temperature=0, stream=True, **kw):
        delta = part.choices[0].delta
        for tc in delta.tool_calls or []:
            name = tc.function.name or name
            args += tc.function.arguments or ""
        finish = part.choices[0].finish_reason or finish
    assert (name, args, finish) == (call.function.name, call.function.arguments, whole.finish_reason)


@pytest.mark.parametrize(
    "body,named",
    [
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "strin"}}}},
            "strin",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"uniqueItems": True}}}},
            "uniqueItems",
        ),
        ({"guided_regex": "a(b"}, "unclosed group"),
        ({"guided_regex": "a", "guided_choice": ["a"]}, "only one"),
        ({"tools": [TOOL], "tool_choice": "auto"}, "auto"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "nope"),
        ({"response_format": {"type": "yaml"}}, "yaml"),
    ],
)
def test_bad_constraints_are_400_in_openais_shape(server, model, body, named):
    r = httpx.post(
        server.base + "/v1/chat/completions",
        json={"model": model, "messages": _messages(), **body},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert named in error["message"] and error["type"] == "invalid_request_error" and error["param"]
    assert server.state.engine.stats()["num_waiting"] == 0
