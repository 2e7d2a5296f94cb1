"""`medvllm serve` end to end on the real default model, driven over loopback HTTP by the official openai
client: answers equal the offline LLM's, 32 concurrent streams (each its own answer), every error case, /metrics through
prometheus_client's parser, a disconnect freeing its KV blocks, no prompt text in the log, SIGTERM.

One server for the module (a subprocess, like production); the oracle `default_llm` loads meanwhile.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from medvllm import SamplingParams  # noqa: E402

pytestmark = pytest.mark.slow

KEY = "test-key-0b1c9d"
AUTH = {"Authorization": f"Bearer {KEY}"}
MARKER = "Quokkaville"  # in the prompts here; without --log-content it must never reach the log
ENGINE_FLAGS = ["--deployment-profile", "none", "--max-model-len", "2048", "--max-num-batched-tokens", "4096"]


@dataclass
class Served:
    proc: subprocess.Popen
    base: str
    health: list[int]  # /health statuses seen while starting
    loading_reply: tuple | None  # (status, Retry-After, body) of /v1/models while loading
    log: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(request, tmp_path_factory):
    port, log = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    env = {k: v for k, v in os.environ.items() if k != "MEDVLLM_API_KEY"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "medvllm.cli", "serve", "--port", str(port), "--api-key", KEY, *ENGINE_FLAGS],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    request.getfixturevalue("default_llm")  # the oracle loads while the server does
    base, health, loading_reply = f"http://127.0.0.1:{port}", [], None
    deadline = time.time() + 600
    while not health or health[-1] != 200:
        assert proc.poll() is None, f"the server exited:\n{log.read_text()}"
        assert time.time() < deadline, f"the server never became ready:\n{log.read_text()}"
        try:
            health.append(httpx.get(base + "/health", timeout=10).status_code)
            if health[-1] == 503 and loading_reply is None:
                r = httpx.get(base + "/v1/models", headers=AUTH, timeout=10)
                loading_reply = (r.status_code, r.headers.get("retry-after"), r.json())
        except httpx.TransportError:
            pass  # not bound yet
        time.sleep(0.2)
    yield Served(proc, base, health, loading_reply, log)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(120)


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.base + "/v1", api_key=KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def model(client):
    return client.models.list().data[0].id


def scrape(served) -> dict:
    """{(sample name, sorted labels): value} from /metrics, parsed by prometheus_client."""
    text = httpx.get(served.base + "/metrics", headers=AUTH, timeout=30).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def both(*calls):
    """Runs the calls at once (server requests share its batch; the offline oracle runs alongside in
    this process) and returns their results in order."""
    with ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def test_health_is_503_until_the_model_is_loaded_and_warm(served):
    assert served.health[0] == 503 and served.health[-1] == 200
    status, retry_after, body = served.loading_reply
    assert status == 503 and int(retry_after) > 0 and body["error"]["code"] == "model_loading"
    assert httpx.get(served.base + "/health").json() == {"status": "ok"}  # no key needed


def test_completion_equals_offline_generate_streamed_or_not(client, model, default_llm):
    prompt = f"A patient from {MARKER} has a fever and a cough. The most likely cause is"
    args = dict(model=model, prompt=prompt, max_tokens=6, temperature=0)
    want, whole, chunks = both(
        lambda: default_llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=6))[0],
        lambda: client.completions.create(**args),
        lambda: list(client.completions.create(**args, stream=True, stream_options={"include_usage": True})),
    )
    text, tokens = want.outputs[0].text, len(want.outputs[0].token_ids)
    assert whole.choices[0].text == text and whole.choices[0].finish_reason == want.outputs[0].finish_reason
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == (len(want.prompt_token_ids), tokens)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == want.outputs[0].finish_reason
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == tokens


def test_chat_equals_offline_chat_streamed_or_not_with_logprobs(client, model, default_llm):
    messages = [
        {"role": "system", "content": "You are a concise clinical assistant."},
        {"role": "user", "content": f"A patient in {MARKER} has a low potassium level. What is it called?"},
    ]
    args = dict(model=model, messages=messages, max_tokens=6, temperature=0)
    want, whole, chunks = both(
        lambda: default_llm.chat(messages, SamplingParams(temperature=0.0, max_tokens=6, logprobs=2))[0],
        lambda: client.chat.completions.create(**args, logprobs=True, top_logprobs=2),
        lambda: list(client.chat.completions.create(**args, stream=True)),
    )
    c = whole.choices[0]
    assert c.message.role == "assistant" and c.message.content == want.outputs[0].text
    assert c.finish_reason == want.outputs[0].finish_reason
    assert whole.usage.prompt_tokens == len(want.prompt_token_ids)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == want.outputs[0].text
    assert chunks[-1].choices[0].finish_reason == want.outputs[0].finish_reason
    tokenizer = default_llm.tokenizer
    for got, token_id, entry in zip(c.logprobs.content, want.outputs[0].token_ids, want.outputs[0].logprobs):
        assert got.token == tokenizer.decode([token_id]) and got.logprob == pytest.approx(entry[token_id], abs=2e-3)
        best = sorted(entry.values(), reverse=True)[:2]
        assert [t.logprob for t in got.top_logprobs] == pytest.approx(best, abs=2e-3)


def test_32_concurrent_streams_all_complete_with_their_own_answers(client, model, default_llm):
    prompts = [f"Question {i} from {MARKER}: name one symptom of anemia." for i in range(32)]
    offline = default_llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=4))
    want = [o.outputs[0].text for o in offline]

    def stream(prompt: str) -> tuple[str, str | None, int]:
        chunks = list(
            client.completions.create(
                model=model,
                prompt=prompt,
                max_tokens=4,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        text = "".join(c.choices[0].text for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        return text, finish, chunks[-1].usage.completion_tokens

    # throughput is benchmarks/serve_load.py's to measure: a busy machine would fail a rate comparison here
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(stream, prompts))
    assert [text for text, _, _ in results] == want  # every client got its own answer, whole
    assert all(finish is not None for _, finish, _ in results)
    assert [n for _, _, n in results] == [len(o.outputs[0].token_ids) for o in offline]


def error_of(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


def test_error_cases_answer_openais_error_shape(served, client, model):
    post = lambda path, headers=AUTH, **kw: httpx.post(served.base + path, headers=headers, timeout=60, **kw)  # noqa: E731
    ok = {"model": model, "prompt": "Hi", "max_tokens": 2}
    error_of(post("/v1/completions", content=b'{"model": '), 400)
    assert error_of(post("/v1/completions", json=ok | {"temperature": "hot"}), 400)["param"] == "temperature"
    assert error_of(post("/v1/completions", json=ok | {"temperature": -1.0}), 400)["param"] == "temperature"
    assert error_of(post("/v1/chat/completions", json={"model": model, "messages": "hi"}), 400)["param"] == "messages"
    assert error_of(post("/v1/completions", json=ok | {"model": "gpt-4"}), 400)["code"] == "model_not_found"
    assert "max_model_len" in error_of(post("/v1/completions", json=ok | {"max_tokens": 5000}), 400)["message"]
    e = error_of(
        post(
            "/v1/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "x"}],
                "functions": [{"name": "f"}],  # OpenAI's legacy field (tools are served: test_structured.py)
                "logit_bias": {"1": 5},
            },
        ),
        400,
    )
    assert e["code"] == "unsupported_parameter" and "functions" in e["message"] and "logit_bias" in e["message"]
    assert error_of(post("/v1/completions", json=ok, headers={}), 401)["code"] == "invalid_api_key"
    error_of(post("/v1/completions", json=ok, headers={"Authorization": "Bearer wrong"}), 401)
    error_of(httpx.get(served.base + "/v1/models"), 401)
    error_of(httpx.get(served.base + "/metrics"), 401)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="not-this-one", prompt="Hi", max_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.base + "/v1", api_key="nope", max_retries=0).models.list()


def test_metrics_parse_and_move(served, client, model):
    before = scrape(served)
    r = client.completions.create(model=model, prompt=f"{MARKER} clinic note:", max_tokens=3, temperature=0)
    httpx.post(served.base + "/v1/completions", headers=AUTH, json={"model": "other", "prompt": "x"})
    after = scrape(served)

    def moved(name, **labels):
        key = (name, tuple(sorted(labels.items())))
        return after[key] - before.get(key, 0.0)

    assert moved("medvllm_requests_total", endpoint="/v1/completions", status="200") == 1
    assert moved("medvllm_requests_total", endpoint="/v1/completions", status="400") == 1
    assert moved("medvllm_prompt_tokens_total") == r.usage.prompt_tokens
    assert moved("medvllm_generation_tokens_total") == r.usage.completion_tokens
    assert moved("medvllm_time_to_first_token_seconds_count") == 1
    assert moved("medvllm_inter_token_latency_seconds_count") == r.usage.completion_tokens - 1
    assert moved("medvllm_request_latency_seconds_count") == 1
    assert after[("medvllm_requests_running", ())] == 0 and after[("medvllm_requests_waiting", ())] == 0
    assert 0 <= after[("medvllm_kv_cache_usage_ratio", ())] <= 1
    # the router-ready names (the Inference Extension's model-server protocol) carry the same numbers
    for ours, router in (
        ("medvllm_requests_waiting", "vllm:num_requests_waiting"),
        ("medvllm_requests_running", "vllm:num_requests_running"),
        ("medvllm_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc"),
        ("medvllm_prefix_cache_query_tokens_total", "vllm:prefix_cache_queries_total"),
        ("medvllm_prefix_cache_hit_tokens_total", "vllm:prefix_cache_hits_total"),
    ):
        assert after[(router, ())] == after[(ours, ())], router
    assert moved("vllm:prefix_cache_queries_total") >= r.usage.prompt_tokens - 1
    hits, queries = after[("vllm:prefix_cache_hits_total", ())], after[("vllm:prefix_cache_queries_total", ())]
    assert after[("medvllm_prefix_cache_hit_rate", ())] == pytest.approx(hits / queries)


def test_disconnect_mid_stream_aborts_and_frees_kv(served, client, model):
    stream = client.completions.create(
        model=model, prompt="A numbered list of 80 common diseases:\n1.", max_tokens=300, temperature=0, stream=True
    )
    chunks = iter(stream)
    next(chunks), next(chunks)
    mid = scrape(served)
    assert mid[("medvllm_requests_running", ())] == 1 and mid[("medvllm_kv_cache_usage_ratio", ())] > 0
    request_id = stream.response.headers["x-request-id"]
    stream.close()
    deadline = time.time() + 60
    while True:
        now = scrape(served)
        if now[("medvllm_requests_running", ())] == 0 and now[("medvllm_kv_cache_usage_ratio", ())] == 0:
            break
        assert time.time() < deadline, now
        time.sleep(0.2)
    line = next(ln for ln in served.log.read_text().splitlines() if request_id in ln)
    assert "outcome=client_disconnected" in line
    assert int(line.split("completion_tokens=")[1].split()[0]) < 300


def test_log_has_request_lines_but_no_prompt_or_completion_text(served):
    text = served.log.read_text()
    lines = [ln for ln in text.splitlines() if "request_id=cmpl-" in ln and "status=200" in ln]
    assert lines and all("prompt_tokens=" in ln and "total_s=" in ln for ln in lines)
    assert MARKER not in text


def test_sigterm_finishes_the_in_flight_stream_then_exits_0(served, client, model):
    """Last: it stops the module's server."""
    stream = client.completions.create(
        model=model,
        prompt=f"{MARKER} discharge summary:",
        max_tokens=6,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = iter(stream)
    first = next(chunks)
    served.proc.send_signal(signal.SIGTERM)
    rest = list(chunks)
    assert rest[-1].usage.completion_tokens == 6
    assert len(first.choices[0].text + "".join(c.choices[0].text for c in rest if c.choices)) > 0
    assert served.proc.wait(120) == 0
    with pytest.raises(httpx.TransportError):
        httpx.get(served.base + "/health", timeout=5)
