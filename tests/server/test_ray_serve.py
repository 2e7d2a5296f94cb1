"""`medvllm serve --ray` on a local Ray cluster (2 CPUs) with 2 engine replicas of a tiny random model,
driven over real HTTP through Serve's proxy by the official openai client: answers equal the offline
engine's, auth and errors as the single server's, prompts sharing a long prefix land on one replica and
hit its prefix cache, and killing a replica gives the requests in flight on it a clean 503 while new
ones are served by the other.

One cluster for the module; skipped where `ray[serve]` is not installed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from medvllm import LLM, SamplingParams  # noqa: E402
from medvllm.config import Config  # noqa: E402
from medvllm.errors import ConfigError  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings  # noqa: E402
from medvllm.server.ray_serve import launch  # noqa: E402
from medvllm.server.ray_serve.options import RayOptions  # noqa: E402
from tests.server.tiny_server import ENGINE, build_tiny_folder, free_port  # noqa: E402

KEY = "ray-test-key-5e1f"
AUTH = {"Authorization": f"Bearer {KEY}"}
REPLICA = "x-medvllm-replica"
ROOT = str(Path(__file__).resolve().parents[2])


class Cluster:
    def __init__(self, base: str, llm: LLM, audit: Path):
        self.base, self.llm, self.audit = base, llm, audit
        self.client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=120)

    def greedy(self, prompt, max_tokens: int) -> str:
        return self.llm.generate([prompt], SamplingParams(temperature=0, max_tokens=max_tokens))[0].outputs[0].text

    def complete(self, prompt, max_tokens: int = 8) -> httpx.Response:
        body = {"model": "tiny", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        return httpx.post(self.base + "/v1/completions", json=body, headers=AUTH, timeout=120)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    tiny = build_tiny_folder(root / "model")
    # a pooled KV cache keeps freed prefixes until untouched blocks run out (unpooled CPU pages reuse freed
    # cached blocks first: two prefixes alternating on one replica would evict each other)
    config = Config(hardware=detect(), model=tiny, enable_memory_pooling=True, **ENGINE)
    settings = ServerSettings(
        api_key=KEY, served_model_name="tiny", audit_log=str(root / "audit.jsonl"), deployment_profile="cpu"
    )
    # the replicas import medvllm from this tree, as the test does
    env = {"PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    try:
        import medvllm

        assert ray.get(ray.remote(lambda: __import__("medvllm").__file__).remote()) == medvllm.__file__
        port = free_port()
        launch.run(launch.build_app(config, settings, RayOptions(replicas=2, replica_cpus=1)), "127.0.0.1", port)
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 300
        while httpx.get(base + "/health", timeout=30).status_code != 200:
            assert time.time() < deadline, "the ingress never became ready"
            time.sleep(0.2)
        yield Cluster(base, LLM(config=config), root / "audit.jsonl")
    finally:
        serve.shutdown()
        ray.shutdown()


def test_completions_and_chat_equal_the_offline_engine_streamed_and_not(cluster):
    c = cluster.client
    prompt = "w5 w9 w3 w17"
    expected = cluster.greedy(prompt, 8)
    reply = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0)
    assert reply.choices[0].text == expected
    streamed = c.completions.create(model="tiny", prompt=prompt, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == expected

    messages = [{"role": "user", "content": "w4 w8 w15"}]
    chat_expected = cluster.llm.chat([messages], SamplingParams(temperature=0, max_tokens=8))[0].outputs[0].text
    answer = c.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content == chat_expected
    chunks = list(c.chat.completions.create(model="tiny", messages=messages, max_tokens=8, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == chat_expected
    assert chunks[-1].choices[0].finish_reason in ("length", "stop")
    assert [m.id for m in c.models.list().data] == ["tiny"]


def test_auth_and_errors_are_the_single_servers(cluster):
    bad = openai.OpenAI(base_url=cluster.base + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.completions.create(model="tiny", prompt="w5", max_tokens=2)
    assert e.value.body["code"] == "invalid_api_key"
    r = httpx.post(cluster.base + "/v1/completions", json={"model": "nope", "prompt": "w5"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["code"] == "model_not_found"
    # prompt + max_tokens over max_model_len: a 400 in OpenAI's shape
    r = cluster.complete([5] * 500, max_tokens=100)
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert cluster.complete("w5 w9", max_tokens=2).status_code == 200
    # the ingress writes the audit trail: the refusal and the answers, under the key's name, no text
    records = [json.loads(line) for line in cluster.audit.read_text().splitlines()]
    assert {rec["status"] for rec in records} >= {200, 400}
    assert all(rec["key"] == "default" for rec in records if rec["status"] != 401)
    assert "w5 w9" not in cluster.audit.read_text()


def test_prompts_sharing_a_long_prefix_land_on_one_replica_and_hit_its_cache(cluster):
    # two long prefixes (10 KV blocks of 16 tokens each), their requests interleaved: A B A B A B
    prefixes = {name: [(k * i + 3) % 250 + 3 for i in range(160)] for name, k in (("a", 7), ("b", 11))}
    replies = {"a": [], "b": []}
    for i in range(3):
        for name, prefix in prefixes.items():
            replies[name].append(cluster.complete(prefix + [10 + i, 20 + i], max_tokens=2))
    for name, group in replies.items():
        assert all(r.status_code == 200 for r in group)
        assert len({r.headers[REPLICA] for r in group}) == 1, f"prefix {name} went to several replicas"
        cached = [r.json()["usage"]["prompt_tokens_details"]["cached_tokens"] for r in group]
        assert all(c >= 160 - 16 for c in cached[1:]), (name, cached)
    # and each prompt is answered as the offline engine answers it
    assert replies["b"][-1].json()["choices"][0]["text"] == cluster.greedy(prefixes["b"] + [12, 22], 2)


def test_killing_a_replica_fails_its_requests_cleanly_and_the_other_serves(cluster):
    # as long an answer as the context allows (ignore_eos), so the stream is still going when the replica dies
    prompt = [40, 41, 42]
    body = {"model": "tiny", "prompt": prompt, "max_tokens": 500, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", cluster.base + "/v1/completions", json=body, headers=AUTH, timeout=120) as stream:
        assert stream.status_code == 200
        victim = stream.headers[REPLICA]
        lines = stream.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["choices"]
        # a whole (non-streamed) request with the same prompt goes to the same replica; wait until it runs
        started = requests_ok(cluster)
        whole: list[httpx.Response] = []
        thread = threading.Thread(
            target=lambda: whole.append(
                httpx.post(cluster.base + "/v1/completions", json=body | {"stream": False}, headers=AUTH, timeout=120)
            )
        )
        thread.start()
        deadline = time.time() + 60
        while requests_ok(cluster) < started + 1:
            assert time.time() < deadline, "the second request never started"
            time.sleep(0.05)
        ray.kill(engine_actors()[victim])
        events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
        thread.join(120)
    # in flight: a clean 503 in OpenAI's shape, as an event on the stream and as the whole reply
    assert events and events[-1]["error"]["code"] == "engine_unavailable"
    assert whole[0].status_code == 503 and whole[0].json()["error"]["code"] == "engine_unavailable"
    assert whole[0].headers["retry-after"]
    # new requests, the same prompt included, are answered (by the other replica until Ray replaces it)
    for i in range(4):
        r = cluster.complete(prompt if i == 0 else [60 + i, 61 + i], max_tokens=4)
        assert r.status_code == 200, r.text
        assert r.headers[REPLICA] != victim
    deadline = time.time() + 300
    while len(set(engine_actors()) - {victim}) < 2:  # Ray starts a replacement
        assert time.time() < deadline, f"no replacement replica: {serve.status()}"
        time.sleep(0.5)


def requests_ok(cluster) -> float:
    """Completions the ingress has admitted (its counter of 200s)."""
    text = httpx.get(cluster.base + "/metrics", headers=AUTH).text
    for line in text.splitlines():
        if line.startswith('medvllm_requests_total{endpoint="/v1/completions",status="200"}'):
            return float(line.split()[-1])
    return 0.0


def engine_actors() -> dict:
    """The live engine replicas' actors, by replica id (the x-medvllm-replica header)."""
    return {
        a["name"].rsplit("#", 1)[-1]: ray.get_actor(a["name"], namespace=a["namespace"])
        for a in ray.util.list_named_actors(all_namespaces=True)
        if "MedvllmEngine" in a["name"]
    }


def test_autoscaling_flags_become_serve_options_and_bad_ones_are_refused():
    config = Config(hardware=detect(), device="cpu", max_num_seqs=8)
    fixed = RayOptions(replicas=3).engine_deployment(config, max_queue=4)
    assert fixed["num_replicas"] == 3 and fixed["max_ongoing_requests"] == 12
    assert fixed["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0}
    scaled = RayOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=6).engine_deployment(config, 4)
    assert scaled["autoscaling_config"] == {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 6}
    assert "num_replicas" not in scaled
    for bad in (
        RayOptions(replicas=2, max_replicas=3),
        RayOptions(replicas=0),
        RayOptions(min_replicas=3, max_replicas=2),
        RayOptions(target_ongoing_requests=0),
    ):
        with pytest.raises(ConfigError):
            bad.check()


def test_ray_flags_without_ray_are_refused(capsys):
    from medvllm.cli.main import main

    assert main(["serve", "--replicas", "2"]) != 0
    assert "--replicas only applies to Ray Serve" in capsys.readouterr().err


def test_app_builder_for_serve_run_and_kuberay_makes_the_same_checks(tmp_path):
    from medvllm.cli.serve_ray import app_builder

    tiny = build_tiny_folder(tmp_path / "model")
    args = {"model": tiny, "deployment-profile": "none", "device": "cpu", "max-model-len": 512, "replicas": 2}
    with pytest.raises(ConfigError, match="key"):  # Serve binds every address: no key, no app
        app_builder(args)
    app = app_builder(args | {"api-key": KEY, "open-metrics": "true"})
    assert isinstance(app, serve.Application)


def test_a_replica_whose_engine_thread_stopped_fails_its_health_check():
    from types import SimpleNamespace

    from medvllm.server.ray_serve.replica import EngineReplica

    replica = object.__new__(EngineReplica)  # no Serve context needed: only check_health runs
    replica.replica_id, replica.engine = "r1", SimpleNamespace(alive=True, error=None)
    replica.check_health()
    replica.engine = SimpleNamespace(alive=False, error=RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="engine thread is not running"):
        replica.check_health()
    replica.engine = None  # nothing to stop when it is collected
