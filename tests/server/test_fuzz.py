"""The HTTP API fuzzed from its own OpenAPI schema (schemathesis: bodies that fit the schema and bodies
that do not) against a real server on loopback over a tiny random model. However odd the request: no
500, no traceback in the server's log, the server healthy afterwards, and every KV block free again.

    python -m pytest tests/server/test_fuzz.py -s    # prints the examples run and the statuses seen
"""

from __future__ import annotations

import json
import logging
from collections import Counter

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")
from hypothesis import (  # noqa: E402
    HealthCheck,
    Phase,
    given,
    settings,
    strategies as st,  # noqa: E402
)
from schemathesis.generation import GenerationMode  # noqa: E402

from medvllm.config import Config  # noqa: E402
from medvllm.engine.llm_engine import LLMEngine  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings  # noqa: E402
from tests.server.tiny_server import ENGINE, ThreadServer, build_tiny_folder, wait_idle  # noqa: E402

EXAMPLES = 150

# valid prompts, some with out-of-vocabulary words or ids, so generation runs rather than only refusals
WORDS = st.lists(st.integers(0, 300).map(lambda i: f"w{i}"), min_size=0, max_size=12).map(" ".join)
IDS = st.lists(st.integers(0, 300), min_size=1, max_size=12)
PROMPTS = st.one_of(WORDS, IDS, st.lists(WORDS, min_size=1, max_size=3), st.lists(IDS, min_size=1, max_size=3))
MESSAGES = st.lists(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": WORDS}),
    min_size=1,
    max_size=3,
)


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    tiny = build_tiny_folder(tmp_path_factory.mktemp("tiny_llama"))
    server = ThreadServer(
        ServerSettings(max_queue=16, served_model_name="tiny", max_body_bytes=64 * 1024, max_request_tokens=1024),
        lambda: LLMEngine(Config(hardware=detect(), model=tiny, max_num_seqs=4, **ENGINE)),
    )
    yield server
    server.stop()


def test_fuzzing_the_api_from_its_schema_finds_no_500_and_leaks_nothing(srv):
    block_manager = srv.state.engine.engine.scheduler.block_manager
    wait_idle(srv.state)
    free_at_start = block_manager.num_free_blocks
    records = Records()
    loggers = [logging.getLogger(name) for name in ("medvllm", "uvicorn", "uvicorn.error")]
    for logger in loggers:
        logger.addHandler(records)

    schema = schemathesis.openapi.from_dict(srv.app.openapi())
    cases = st.one_of(schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE))
    statuses: Counter = Counter()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases, served=st.booleans(), prompt=PROMPTS, messages=MESSAGES)
    def fuzz(case, served, prompt, messages):
        if served and isinstance(case.body, dict):  # the served model, and often a usable prompt, to go deeper
            case.body["model"] = "tiny"
            if "prompt" in case.body or case.path.endswith("/completions") and "messages" not in case.body:
                case.body["prompt"] = prompt
            else:
                case.body["messages"] = messages
        response = case.call(base_url=srv.base, timeout=60)
        statuses[response.status_code] += 1
        assert response.status_code != 500, (case.method, case.path, case.body, response.text)
        if response.status_code >= 400:
            error = response.json()["error"]
            assert set(error) == {"message", "type", "param", "code"}, response.text

    try:
        fuzz()
    finally:
        for logger in loggers:
            logger.removeHandler(records)
    print(f"\nfuzz: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES and statuses[500] == 0
    assert statuses[200] > 0, "no request got through to generation"
    tracebacks = [r for r in records.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [r.getMessage() for r in tracebacks]
    assert httpx.get(srv.base + "/health").json() == {"status": "ok"}
    wait_idle(srv.state)
    assert block_manager.num_free_blocks == free_at_start
    assert srv.state.inflight == 0


# JSON values of any shape, with the odd ones json.dumps writes: NaN, Infinity, lone surrogates
CHARS = st.one_of(st.characters(), st.sampled_from(["\ud800", "\udfff", "\x00", " ", "w"]))
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(CHARS, max_size=12)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
FIELDS = ["n", "stream", "temperature", "top_p", "top_k", "min_p", "seed", "stop", "logprobs", "top_logprobs"]
BODIES = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny", "other"])},
    optional={f: JSON for f in FIELDS}
    | {"prompt": PROMPTS | JSON, "messages": MESSAGES | JSON, "max_tokens": st.integers(-1, 40) | JSON},
)


def test_fuzzing_bodies_of_any_json_finds_no_500_and_leaks_nothing(srv):
    block_manager = srv.state.engine.engine.scheduler.block_manager
    wait_idle(srv.state)
    free_at_start = block_manager.num_free_blocks
    statuses: Counter = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(body=BODIES, chat=st.booleans())
    def fuzz(body, chat):
        path = "/v1/chat/completions" if chat else "/v1/completions"
        r = httpx.post(srv.base + path, content=json.dumps(body).encode(), timeout=60)
        statuses[r.status_code] += 1
        assert r.status_code != 500, (path, body, r.text)
        if r.status_code >= 400:
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}, r.text

    fuzz()
    print(f"\nfuzz (any JSON): {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")
    assert sum(statuses.values()) >= EXAMPLES and statuses[500] == 0
    assert httpx.get(srv.base + "/health").json() == {"status": "ok"}
    wait_idle(srv.state)
    assert block_manager.num_free_blocks == free_at_start and srv.state.inflight == 0


# ---- what fuzzing found: bodies Python's json module accepts that are not valid JSON text for us
@pytest.mark.parametrize(
    "body",
    [
        '{"model": "tiny", "prompt": "\\ud800 w5"}',  # a lone surrogate: no UTF-8 text can hold it
        '{"model": "tiny", "messages": [{"role": "user", "content": "w5 \\udfff"}]}',
        '{"model": "tiny", "prompt": "w5", "stop": ["\\ud800"]}',
        '{"model": "tiny", "prompt": "w5", "temperature": NaN}',  # not JSON, though Python reads it
        '{"model": "tiny", "prompt": "w5", "repetition_penalty": Infinity}',
        '{"model": "tiny", "prompt": "w5", "top_p": -Infinity}',
        '{"model": "tiny", "prompt": "w5", "temperature": 1e999}',  # overflows to infinity
        '{"model": "tiny", "prompt": ' + "[" * 5000 + "]" * 5000 + "}",  # deeper than the parser recurses
        '{"model": "tiny", "prompt": "w5", "stop": ' + "[" * 900 + "]" * 900 + "}",
    ],
    ids=[
        "surrogate",
        "surrogate-chat",
        "surrogate-stop",
        "nan",
        "infinity",
        "-infinity",
        "overflow",
        "deep",
        "deep-stop",
    ],
)
def test_bodies_json_would_mangle_are_400s(srv, body):
    path = "/v1/chat/completions" if "messages" in body else "/v1/completions"
    r = httpx.post(srv.base + path, content=body.encode(), timeout=60)
    assert r.status_code == 400, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert srv.state.inflight == 0


def test_an_emoji_written_as_a_surrogate_pair_escape_is_fine(srv):
    r = httpx.post(srv.base + "/v1/completions", content=b'{"model": "tiny", "prompt": "w5 \\ud83d\\ude00"}')
    assert r.status_code == 200, r.text
