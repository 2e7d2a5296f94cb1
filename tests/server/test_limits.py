"""Server limits and plumbing on a tiny random model (fast): the async engine, auth off, queue-full 503,
disconnects, SSE framing, n and prompt lists, --log-content, and the bind rule.

The oracle for generated text is the offline LLM on the same tiny model; for the wire format, the
official openai client and OpenAI's SSE framing; nothing here stands in for the engine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
import uvicorn  # noqa: E402

from medvllm import LLM, SamplingParams  # noqa: E402
from medvllm.config import Config  # noqa: E402
from medvllm.engine.async_engine import AsyncLLMEngine, EngineDeadError  # noqa: E402
from medvllm.engine.llm_engine import LLMEngine  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings, create_app  # noqa: E402
from medvllm.server.auth import check_bind, is_loopback  # noqa: E402
from medvllm.server.errors import APIError  # noqa: E402
from medvllm.server.keys import KeyTable  # noqa: E402
from tests.server.tiny_server import ENGINE, ThreadServer, build_tiny_folder, free_port, wait_idle  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_folder(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def offline(tiny):
    return LLM(tiny, max_num_seqs=8, **ENGINE)


@pytest.fixture(scope="module")
def srv(tiny):
    """No API key, one running sequence at a time, one more may wait, text logging on."""
    server = ThreadServer(
        ServerSettings(max_queue=1, log_content=True, served_model_name="tiny"),
        lambda: LLMEngine(Config(hardware=detect(), model=tiny, max_num_seqs=1, **ENGINE)),
    )
    yield server
    server.stop()


# ---- the async engine itself
def test_async_engine_batches_concurrent_requests_and_matches_offline(tiny, offline):
    from tests.engine_probe import LogitsRecorder

    prompts = [[5 + i, 9, 11 + i] for i in range(6)]
    params = SamplingParams(temperature=0.0, max_tokens=5)
    expected = [o.outputs[0].token_ids for o in offline.generate(prompts, params)]
    engine = LLMEngine(Config(hardware=detect(), model=tiny, max_num_seqs=8, **ENGINE))
    recorder = LogitsRecorder(engine)
    front = AsyncLLMEngine(engine).start()

    async def one(ids):
        async with await front.add([(ids, params)]) as stream:
            return [out async for _, out in stream][-1].outputs[0].token_ids

    async def main():
        return await asyncio.gather(*(one(p) for p in prompts))

    try:
        assert asyncio.run(main()) == expected
        assert max(len(ids) for ids, _ in recorder.steps) > 1, "concurrent requests never shared a step"

        async def abandon():  # leave a long request after two tokens: it is aborted and its blocks freed
            async with await front.add([(prompts[0], SamplingParams(temperature=0.0, max_tokens=400))]) as s:
                for _ in range(2):
                    await s.__anext__()

        asyncio.run(abandon())
        deadline = time.time() + 20
        while front.stats()["num_running"] or front.stats()["kv_cache_usage"]:
            assert time.time() < deadline, front.stats()
            time.sleep(0.05)
        with pytest.raises(Exception, match="exceeds max_model_len"):
            asyncio.run(front.add([(prompts[0], SamplingParams(max_tokens=600))]))
    finally:
        front.stop()
    with pytest.raises(EngineDeadError):
        asyncio.run(front.add([(prompts[0], params)]))


# ---- auth off, n, prompt lists
def test_no_key_configured_serves_anyone_and_n_and_prompt_lists_match_offline(srv, offline):
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="anything", max_retries=0)
    prompts = ["w5 w6 w7", "w9 w8"]
    params = SamplingParams(temperature=0.0, max_tokens=4)
    expected = [o.outputs[0].text for o in offline.generate(prompts, params)]
    # two requests: max_num_seqs 1 + max_queue 1 admit two sequences at once
    r = client.completions.create(model="tiny", prompt=prompts, max_tokens=4, temperature=0)
    assert {c.index: c.text for c in r.choices} == {0: expected[0], 1: expected[1]}
    assert r.usage.completion_tokens == 8
    r = client.completions.create(model="tiny", prompt=prompts[1], max_tokens=4, temperature=0, n=2)
    assert {c.index: c.text for c in r.choices} == {0: expected[1], 1: expected[1]}
    assert httpx.get(srv.base + "/metrics").status_code == 200
    assert httpx.get(srv.base + "/v1/models").json()["data"][0]["id"] == "tiny"


def test_sse_framing_is_openais(srv, offline):
    """Raw bytes: `data: {json}` events split by blank lines, a role chunk first, an empty-delta chunk
    with the finish reason, a usage chunk with no choices, then `data: [DONE]`."""
    expected = (
        offline.chat([{"role": "user", "content": "w4 w5"}], SamplingParams(temperature=0.0, max_tokens=3))[0]
        .outputs[0]
        .text
    )
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "w4 w5"}],
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", srv.base + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    assert raw.endswith("\n\ndata: [DONE]\n\n")
    events = raw.split("\n\n")[:-2]
    assert all(e.startswith("data: {") for e in events)
    chunks = [json.loads(e[len("data: ") :]) for e in events]
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[1:-1])
    assert text == expected
    assert chunks[-2]["choices"][0]["delta"] == {} and chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 3
    assert all(c["usage"] is None for c in chunks[:-1])


def test_completion_logprobs_match_offline(srv, offline):
    want = offline.generate("w5 w6", SamplingParams(temperature=0.0, max_tokens=4, logprobs=2))[0].outputs[0]
    client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0)
    lp = (
        client.completions.create(model="tiny", prompt="w5 w6", max_tokens=4, temperature=0, logprobs=2)
        .choices[0]
        .logprobs
    )
    tokenizer = offline.tokenizer
    assert lp.tokens == [tokenizer.decode([t]) for t in want.token_ids]
    assert lp.token_logprobs == pytest.approx([e[t] for t, e in zip(want.token_ids, want.logprobs)], abs=1e-4)
    for top, entry in zip(lp.top_logprobs, want.logprobs):
        best = sorted(entry.items(), key=lambda kv: -kv[1])[:2]
        assert top == pytest.approx({tokenizer.decode([i]): v for i, v in best}, abs=1e-4)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_a_model_that_fails_to_load_keeps_health_at_503_and_reports_why():
    from medvllm.errors import ModelLoadError

    failures = []

    def load():
        raise ModelLoadError("no such model: /nowhere")

    app = create_app(ServerSettings(), load, on_failure=failures.append)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 60
        while not failures:
            assert time.time() < deadline
            time.sleep(0.05)
        r = httpx.get(f"http://127.0.0.1:{port}/health")
        assert (r.status_code, r.json()) == (503, {"status": "failed"})
        assert isinstance(failures[0], ModelLoadError)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/completions", json={"model": "m", "prompt": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "engine_unavailable"
    finally:
        server.should_exit = True
        thread.join(30)


def test_a_server_stopped_while_loading_waits_for_the_load_then_starts_nothing(tiny):
    """Leaving under the loader's native code aborted the process (exit 134): shutdown now waits for the
    load, releases what it made, and never starts the engine."""
    started, release, shut = threading.Event(), threading.Event(), []

    def load():
        started.set()
        release.wait(60)
        engine = LLMEngine(Config(hardware=detect(), model=tiny, max_num_seqs=1, **ENGINE))
        engine.shutdown = lambda: shut.append(True)
        return engine

    app = create_app(ServerSettings(), load)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    assert started.wait(60)
    server.should_exit = True
    time.sleep(0.5)
    assert thread.is_alive() and app.state.served.status == "stopping"  # waiting for the load
    release.set()
    thread.join(60)
    assert not thread.is_alive() and app.state.served.engine is None and shut == [True]


# ---- backpressure
def test_full_queue_answers_503_with_retry_after(srv):
    long = {"model": "tiny", "prompt": "w5 w6", "max_tokens": 400, "temperature": 0, "stream": True}
    with httpx.Client(base_url=srv.base, timeout=60) as a, httpx.Client(base_url=srv.base, timeout=60) as b:
        with a.stream("POST", "/v1/completions", json=long) as running:
            running_lines = running.iter_lines()  # keep it: a dropped iterator closes the connection
            next(running_lines)  # it has a token: it holds the one batch slot
            with b.stream("POST", "/v1/completions", json=long | {"max_tokens": 3}) as waiting:
                assert waiting.status_code == 200  # admitted: it waits in the queue
                r = httpx.post(srv.base + "/v1/completions", json=long | {"stream": False})
                assert r.status_code == 503 and r.headers["retry-after"] == "1"
                assert r.json()["error"]["code"] == "queue_full" and set(r.json()["error"]) == {
                    "message",
                    "type",
                    "param",
                    "code",
                }
                client = openai.OpenAI(base_url=srv.base + "/v1", api_key="x", max_retries=0)
                with pytest.raises(openai.InternalServerError) as e:
                    client.completions.create(model="tiny", prompt="w1", max_tokens=2)
                assert e.value.status_code == 503
                running.close()  # the running one leaves: the waiting one runs to the end
                events = [line for line in waiting.iter_lines() if line]
        assert events[-1] == "data: [DONE]"
        assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"
    wait_idle(srv.state)
    assert srv.state.inflight == 0


# ---- disconnects
def test_non_streaming_client_that_leaves_is_aborted(srv, caplog):
    caplog.set_level(logging.INFO, logger="medvllm.server")
    with pytest.raises(httpx.ReadTimeout):
        # leaves 50 ms in: 500 tokens take the tiny model several times that (400 in 0.5 s was too close
        # once the engine got faster)
        httpx.post(
            srv.base + "/v1/completions",
            json={"model": "tiny", "prompt": "w7", "max_tokens": 500, "temperature": 0},
            timeout=httpx.Timeout(60, read=0.05),
        )
    wait_idle(srv.state)
    lines = [r.getMessage() for r in caplog.records if "outcome=client_disconnected" in r.getMessage()]
    assert lines, "the server did not log the disconnect"
    tokens = int(lines[-1].split("completion_tokens=")[1].split()[0])
    assert tokens < 500


def test_log_content_flag_puts_text_in_the_log(srv, caplog):
    caplog.set_level(logging.INFO, logger="medvllm.server")
    r = httpx.post(srv.base + "/v1/completions", json={"model": "tiny", "prompt": "w41 w42 w43", "max_tokens": 2})
    assert r.status_code == 200
    messages = [rec.getMessage() for rec in caplog.records]
    request_id = r.json()["id"]
    assert any(request_id in m and "w41 w42 w43" in m and r.json()["choices"][0]["text"] in m for m in messages)


# ---- the bind rule and the key check
def test_refuses_a_public_bind_without_a_key(monkeypatch, capsys):
    from medvllm.cli.main import main

    monkeypatch.delenv("MEDVLLM_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 1
    err = capsys.readouterr().err
    assert "--allow-unauthenticated" in err and "MEDVLLM_API_KEY" in err and len(err.strip().splitlines()) == 1
    check_bind("0.0.0.0", "a-key", False)
    check_bind("0.0.0.0", None, True)
    check_bind("::1", None, False)
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and not is_loopback("example.org")


def test_key_check():
    keys = KeyTable("s3cret")
    keys.identify("Bearer s3cret")
    for header in (None, "", "Bearer", "Bearer s3cre", "Bearer s3cret2", "Basic s3cret", "s3cret"):
        with pytest.raises(APIError) as e:
            keys.identify(header)
        assert e.value.status == 401 and e.value.code == "invalid_api_key"
    KeyTable(None).identify(None)
