"""Hardening on a tiny random model over real loopback HTTP: the body size limit (413), limits on n,
prompt lists and the tokens one request may ask for (400s naming them), backpressure when idle,
tokenizing off the event loop, the API key's normalization, and an engine that dies just before a
request is enqueued (503 at once, nothing leaked, /health not 200)."""

from __future__ import annotations

import socket
import threading

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from medvllm.config import Config  # noqa: E402
from medvllm.engine.async_engine import _Abort  # noqa: E402
from medvllm.engine.llm_engine import LLMEngine  # noqa: E402
from medvllm.errors import ConfigError  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings  # noqa: E402
from medvllm.server.errors import APIError  # noqa: E402
from medvllm.server.keys import KeyTable  # noqa: E402
from tests.server.tiny_server import ENGINE, ThreadServer, build_tiny_folder, free_port, wait_idle  # noqa: E402

BODY_LIMIT = 4096
TOKEN_LIMIT = 200


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_folder(tmp_path_factory.mktemp("tiny_llama"))


def tiny_engine(tiny, max_num_seqs: int = 1):
    return lambda: LLMEngine(Config(hardware=detect(), model=tiny, max_num_seqs=max_num_seqs, **ENGINE))


@pytest.fixture(scope="module")
def srv(tiny):
    """One running sequence, one more may wait; small body and token limits."""
    server = ThreadServer(
        ServerSettings(
            max_queue=1, served_model_name="tiny", max_body_bytes=BODY_LIMIT, max_request_tokens=TOKEN_LIMIT
        ),
        tiny_engine(tiny),
    )
    yield server
    server.stop()


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def post(srv, path: str, **kw) -> httpx.Response:
    return httpx.post(srv.base + path, **{"timeout": 60} | kw)


# ---- body size
def test_a_body_over_the_limit_gets_413(srv):
    big = {"model": "tiny", "prompt": "w5 " * BODY_LIMIT, "max_tokens": 1}
    e = error_of(post(srv, "/v1/completions", json=big), 413)
    assert str(BODY_LIMIT) in e["message"] and e["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as the body arrives
        yield b'{"model": "tiny", "prompt": "'
        for _ in range(10):
            yield b"w5 " * 200
        yield b'"}'

    error_of(post(srv, "/v1/chat/completions", content=chunks()), 413)
    assert post(srv, "/v1/completions", json={"model": "tiny", "prompt": "w5", "max_tokens": 1}).status_code == 200


def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_sent(srv):
    """The 413 comes back while the client has sent no byte of its (claimed 10 GB) body."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        reply = b""
        while b"\r\n\r\n" not in reply:
            data = s.recv(4096)
            assert data, reply
            reply += data
    assert reply.startswith(b"HTTP/1.1 413"), reply


# ---- n, prompt lists, tokens per request, idle backpressure
def test_n_over_its_limit_is_a_400_naming_it(srv):
    e = error_of(post(srv, "/v1/completions", json={"model": "tiny", "prompt": "w5", "n": 17}), 400)
    assert e["param"] == "n" and "16" in e["message"]


def test_a_prompt_list_over_its_limit_is_a_400_naming_it(srv):
    e = error_of(post(srv, "/v1/completions", json={"model": "tiny", "prompt": [[5]] * 129, "max_tokens": 1}), 400)
    assert e["param"] == "prompt" and "128" in e["message"] and "129" in e["message"]


def test_tokens_one_request_asks_for_are_limited(srv):
    # 2 prompts x 2 prompt tokens + 2 prompts x 99 = 202 > 200
    body = {"model": "tiny", "prompt": ["w5 w6", "w7 w8"], "max_tokens": 99, "temperature": 0}
    e = error_of(post(srv, "/v1/completions", json=body), 400)
    assert e["param"] == "max_tokens" and str(TOKEN_LIMIT) in e["message"] and "202" in e["message"]
    # 2 prompt tokens + n=2 x 100 = 202
    e = error_of(post(srv, "/v1/completions", json=body | {"prompt": "w5 w6", "n": 2, "max_tokens": 100}), 400)
    assert e["param"] == "max_tokens" and "202" in e["message"]
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "w5"}]}  # no max_tokens: up to 512
    e = error_of(post(srv, "/v1/chat/completions", json=chat), 400)
    assert e["param"] == "max_tokens" and str(TOKEN_LIMIT) in e["message"]
    assert post(srv, "/v1/completions", json=body | {"max_tokens": 98}).status_code == 200  # 200: at the limit


def test_a_request_larger_than_the_queue_is_refused_even_when_idle(srv):
    """max_num_seqs 1 + max_queue 1: three sequences can never be admitted, idle server or not."""
    wait_idle(srv.state)
    body = {"model": "tiny", "prompt": ["w5", "w6", "w7"], "max_tokens": 1}
    e = error_of(post(srv, "/v1/completions", json=body), 400)
    assert "3" in e["message"] and "2" in e["message"] and e["param"] in ("n", "prompt")
    assert srv.state.inflight == 0
    assert post(srv, "/v1/completions", json=body | {"prompt": ["w5", "w6"]}).status_code == 200


# ---- tokenizing off the event loop
class ThreadRecorder:
    """The tokenizer, noting which thread calls encode / apply_chat_template."""

    def __init__(self, tokenizer):
        self._tokenizer, self.threads = tokenizer, []

    def __getattr__(self, name):
        value = getattr(self._tokenizer, name)
        if name in ("encode", "apply_chat_template"):
            self.threads.append(threading.current_thread())
        return value


def test_tokenizing_and_chat_templating_run_off_the_event_loop(srv, monkeypatch):
    recorder = ThreadRecorder(srv.state.tokenizer)
    monkeypatch.setattr(srv.state, "tokenizer", recorder)
    assert post(srv, "/v1/completions", json={"model": "tiny", "prompt": "w5 w6", "max_tokens": 1}).status_code == 200
    chat = {"model": "tiny", "messages": [{"role": "user", "content": "w5"}], "max_tokens": 1}
    assert post(srv, "/v1/chat/completions", json=chat).status_code == 200
    assert len(recorder.threads) >= 2
    assert all(t is not srv.thread for t in recorder.threads), "the event loop's thread tokenized a prompt"


# ---- the API key
def test_the_configured_key_is_normalized_like_the_presented_one(monkeypatch, capsys):
    keys = KeyTable("  s3cret\n")
    keys.identify("Bearer s3cret")
    keys.identify("Bearer  s3cret ")
    with pytest.raises(APIError):
        keys.identify("Bearer s3cret2")
    with pytest.raises(ConfigError, match="blank"):
        KeyTable(" \t")
    from medvllm.cli.main import main

    monkeypatch.delenv("MEDVLLM_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port()), "--api-key", "  "]) == 1
    assert "blank" in capsys.readouterr().err


# ---- the engine dying between the liveness check and the enqueue
def die(engine) -> None:
    """Makes the engine thread fail on its next loop, wakes it, and waits for it to end."""

    def broken():
        raise RuntimeError("injected engine failure")

    engine.engine.has_unfinished_requests = broken
    engine._commands.put(_Abort([]))  # wakes the thread, which then checks for work and fails
    engine._thread.join(30)


@pytest.mark.parametrize("how", ["dies", "stops"])
@pytest.mark.parametrize("stream", [False, True])
def test_an_engine_gone_just_before_the_enqueue_fails_the_request_at_once(tiny, how, stream):
    server = ThreadServer(ServerSettings(served_model_name="tiny"), tiny_engine(tiny, max_num_seqs=2))
    try:
        engine = server.state.engine
        enqueue = engine._submit

        def late(command):  # the liveness check has passed; the thread goes away now
            if hasattr(command, "requests"):
                die(engine) if how == "dies" else engine.stop()
                assert not engine._thread.is_alive()
            enqueue(command)

        engine._submit = late
        body = {"model": "tiny", "prompt": "w5 w6", "max_tokens": 3, "stream": stream}
        try:
            r = post(server, "/v1/completions", json=body, timeout=httpx.Timeout(30))
        except httpx.ReadTimeout:
            pytest.fail("the request waited on an engine that was gone")
        e = error_of(r, 503)
        assert e["code"] == "engine_unavailable"
        assert server.state.inflight == 0
        health = httpx.get(server.base + "/health", timeout=30)
        assert health.status_code != 200 and health.json()["status"] != "ok"
        e = error_of(post(server, "/v1/completions", json=body), 503)  # and the next one, at the check
        assert server.state.inflight == 0
    finally:
        server.stop()


# ---- a step that raises fails its requests alone
@pytest.mark.parametrize("stream", [False, True])
def test_a_failing_step_is_a_500_for_its_request_and_the_server_goes_on(tiny, stream):
    server = ThreadServer(ServerSettings(served_model_name="tiny"), tiny_engine(tiny, max_num_seqs=2))
    try:
        executor = server.state.engine.engine.executor
        run = executor.run
        failures = iter([RuntimeError("injected step failure")])

        def once(seqs, is_prefill):  # the first step raises, later ones run
            error = next(failures, None)
            if error is not None:
                raise error
            return run(seqs, is_prefill)

        executor.run = once
        body = {"model": "tiny", "prompt": "w5 w6", "max_tokens": 3, "stream": stream}
        r = post(server, "/v1/completions", json=body, timeout=httpx.Timeout(60))
        if stream:  # the headers went out before the step: the error is the stream's last event
            assert r.status_code == 200 and '"code": "step_failed"' in r.text.replace('":"', '": "')
        else:
            assert error_of(r, 500)["code"] == "step_failed"
        wait_idle(server.state)
        assert server.state.inflight == 0
        assert httpx.get(server.base + "/health", timeout=30).status_code == 200
        ok = post(server, "/v1/completions", json={**body, "stream": False}, timeout=httpx.Timeout(60))
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] in ("length", "stop")
    finally:
        server.stop()


def test_an_image_part_in_a_chat_message_is_a_400_saying_to_send_text(srv):
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}
    content = [{"type": "text", "text": "What does this X-ray show?"}, image]
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 1}
    e = error_of(post(srv, "/v1/chat/completions", json=body), 400)
    assert "image" in e["message"] and "as text" in e["message"] and "\n" not in e["message"]
    text_only = {"model": "tiny", "messages": [{"role": "user", "content": content[:1]}], "max_tokens": 1}
    assert post(srv, "/v1/chat/completions", json=text_only).status_code == 200


def test_ignore_eos_runs_to_max_tokens_as_offline(srv, tiny):
    from medvllm import LLM, SamplingParams

    body = {"model": "tiny", "prompt": "w5 w6", "max_tokens": 12, "temperature": 0, "ignore_eos": True}
    r = post(srv, "/v1/completions", json=body).json()
    offline = LLM(tiny, **ENGINE).generate(["w5 w6"], SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    assert r["usage"]["completion_tokens"] == 12 and r["choices"][0]["text"] == offline[0].outputs[0].text
