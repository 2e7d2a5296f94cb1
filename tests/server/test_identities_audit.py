"""Named keys, their limits and the audit trail over real loopback HTTP, on a tiny random model."""

from __future__ import annotations

import hashlib
import json

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from medvllm.config import Config  # noqa: E402
from medvllm.engine.llm_engine import LLMEngine  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings  # noqa: E402
from medvllm.server.audit_chain import verify  # noqa: E402
from tests.server.tiny_server import ENGINE, ThreadServer, build_tiny_folder  # noqa: E402

PROMPT = "w5 w6 w7 w8"


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture(scope="module")
def srv(tmp_path_factory):
    root = tmp_path_factory.mktemp("identities")
    tiny = build_tiny_folder(root / "model")
    keys = {"keys": [{"name": "ed-triage", "sha256": sha("k-ed")}, {"name": "batch", "sha256": sha("k-batch"),
            "requests_per_minute": 2}]}  # fmt: skip
    (root / "keys.json").write_text(json.dumps(keys))
    settings = ServerSettings(
        served_model_name="tiny",
        api_keys_file=str(root / "keys.json"),
        audit_log=str(root / "audit.jsonl"),
        deployment_profile="cpu",
        settings_sha256="ab" * 32,
    )
    server = ThreadServer(settings, lambda: LLMEngine(Config(hardware=detect(), model=tiny, **ENGINE)))
    server.audit_path, server.model_path = root / "audit.jsonl", tiny
    yield server
    server.stop()


def client(srv, key):
    return openai.OpenAI(base_url=srv.base + "/v1", api_key=key, max_retries=0)


def records(srv) -> list[dict]:
    return [json.loads(line) for line in srv.audit_path.read_text().splitlines()]


def test_each_key_is_its_own_identity_with_its_own_limit(srv):
    batch = client(srv, "k-batch")
    for _ in range(2):
        batch.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as e:
        batch.completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    assert e.value.status_code == 429 and int(e.value.response.headers["Retry-After"]) >= 1
    assert e.value.body["code"] == "rate_limit_exceeded" and "'batch'" in e.value.body["message"]
    client(srv, "k-ed").completions.create(model="tiny", prompt=PROMPT, max_tokens=2)  # other keys unaffected
    with pytest.raises(openai.AuthenticationError):
        client(srv, "k-unknown").models.list()


def test_audit_records_who_what_and_digests_but_no_text(srv):
    before = len(records(srv)) if srv.audit_path.exists() else 0
    r = client(srv, "k-ed").completions.create(model="tiny", prompt=PROMPT, max_tokens=4, temperature=0, n=2)
    chat = client(srv, "k-ed").chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": PROMPT}], max_tokens=3, temperature=0
    )
    new = records(srv)[before:]
    rec = next(x for x in new if x["request_id"] == r.id)
    ids = list(srv.state.tokenizer.encode(PROMPT))
    assert rec["key"] == "ed-triage" and rec["client"] == "127.0.0.1" and rec["endpoint"] == "/v1/completions"
    assert rec["model"] == "tiny" and rec["deployment_profile"] == "cpu" and rec["settings_sha256"] == "ab" * 32
    assert rec["status"] == 200 and rec["n"] == 2 and rec["prompt_tokens"] == r.usage.prompt_tokens
    assert rec["completion_tokens"] == r.usage.completion_tokens
    assert rec["prompt_sha256"] == [sha(json.dumps(ids, separators=(",", ":")))]
    assert rec["output_sha256"] == [sha(c.text) for c in sorted(r.choices, key=lambda c: c.index)]
    assert rec["finish_reasons"] == [c.finish_reason for c in sorted(r.choices, key=lambda c: c.index)]
    assert len(rec["model_sha256"]) == 64 and rec["total_s"] >= rec["ttft_s"] > 0
    chat_rec = next(x for x in new if x["request_id"] == chat.id)
    assert chat_rec["endpoint"] == "/v1/chat/completions"
    assert chat_rec["output_sha256"] == [sha(chat.choices[0].message.content)]
    text = srv.audit_path.read_text()
    assert verify([str(srv.audit_path)]).broken is None  # the server's trail is one unbroken chain
    assert PROMPT not in text and all(c.text not in text for c in r.choices if len(c.text) > 3)


def test_refused_requests_are_audited_too(srv):
    before = len(records(srv))
    with pytest.raises(openai.BadRequestError):
        client(srv, "k-ed").completions.create(model="tiny", prompt=PROMPT, max_tokens=2, temperature=-1)
    with pytest.raises(openai.RateLimitError):
        client(srv, "k-batch").completions.create(model="tiny", prompt=PROMPT, max_tokens=2)
    statuses = [(x["key"], x["status"]) for x in records(srv)[before:]]
    assert ("ed-triage", 400) in statuses and ("batch", 429) in statuses


def test_open_metrics_lets_a_router_scrape_without_a_key_while_the_api_still_needs_one(srv):
    assert httpx.get(srv.base + "/metrics").status_code == 401
    srv.state.settings.open_metrics = True
    try:
        r = httpx.get(srv.base + "/metrics")
        assert r.status_code == 200 and "vllm:num_requests_waiting" in r.text
        assert httpx.post(srv.base + "/v1/completions", json={"model": "tiny", "prompt": "w5"}).status_code == 401
    finally:
        srv.state.settings.open_metrics = False
