"""The HTTP API's `priority` (vLLM's extra field): it reaches the engine as given, a request without one
takes its key's priority from the keys file, else the server's default, and a bad one is a 400."""

from __future__ import annotations

import hashlib
import json

import pytest

pytest.importorskip("fastapi")
openai = pytest.importorskip("openai")

from medvllm import LLM, SamplingParams  # noqa: E402
from medvllm.config import Config  # noqa: E402
from medvllm.engine.llm_engine import LLMEngine  # noqa: E402
from medvllm.hardware import detect  # noqa: E402
from medvllm.server import ServerSettings  # noqa: E402
from tests.server.tiny_server import ENGINE, ThreadServer, build_tiny_folder  # noqa: E402


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_folder(tmp_path_factory.mktemp("tiny_llama"))


def test_priority_field_and_the_keys_default_reach_the_engine(tiny, tmp_path):
    seen: list[int] = []
    keys = [{"name": "ed", "sha256": hashlib.sha256(b"k-ed").hexdigest(), "priority": -10}]
    (tmp_path / "keys.json").write_text(json.dumps({"keys": keys}))

    def load():
        engine = LLMEngine(Config(hardware=detect(), model=tiny, scheduling_policy="priority", **ENGINE))
        add = engine.add_request

        def noting(*args, priority=0, **kw):
            seen.append(priority)
            return add(*args, priority=priority, **kw)

        engine.add_request = noting
        return engine

    settings = ServerSettings(
        served_model_name="tiny", api_key="k", api_keys_file=str(tmp_path / "keys.json"), default_priority=7
    )
    server = ThreadServer(settings, load)
    try:
        client = openai.OpenAI(base_url=server.base + "/v1", api_key="k", max_retries=0)
        expected = LLM(tiny, **ENGINE).generate(["w5 w6 w7"], SamplingParams(temperature=0, max_tokens=4))
        r = client.completions.create(
            model="tiny", prompt="w5 w6 w7", max_tokens=4, temperature=0, extra_body={"priority": -3}
        )
        assert r.choices[0].text == expected[0].outputs[0].text
        client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "w5"}], max_tokens=2)
        assert seen[-2:] == [-3, 7]  # after the server's own warm-up request
        with pytest.raises(openai.BadRequestError, match="priority"):
            client.completions.create(model="tiny", prompt="w5", max_tokens=2, extra_body={"priority": "high"})
        assert seen[-2:] == [-3, 7]
        ed = openai.OpenAI(base_url=server.base + "/v1", api_key="k-ed", max_retries=0)
        ed.completions.create(model="tiny", prompt="w5", max_tokens=2)  # the ED key's own default
        ed.completions.create(model="tiny", prompt="w5", max_tokens=2, extra_body={"priority": 3})
        assert seen[-2:] == [-10, 3]
    finally:
        server.stop()
