"""Start-up: a GGUF model loads and generates (plain, chat and structured prompts; offline, over HTTP and
from the CLI) without ever importing transformers (about a second of start-up on a small CPU)."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]  # `tests` imports from here

SCRIPT = textwrap.dedent(
    """
    import contextlib, io, json, sys

    import httpx

    from medvllm import LLM, SamplingParams
    from medvllm.cli.main import main
    from medvllm.server import ServerSettings
    from tests.server.tiny_server import ThreadServer

    def imported():
        return sorted(m for m in sys.modules if m == "transformers" or m.startswith("transformers."))

    seen = {}
    llm = LLM(None, deployment_profile="cpu_gguf")
    params = SamplingParams(temperature=0, max_tokens=4)
    assert llm.generate("Sepsis is", params)[0].outputs[0].token_ids
    assert llm.chat([{"role": "user", "content": "What is sepsis?"}], params)[0].outputs[0].token_ids
    choice = SamplingParams(temperature=0, max_tokens=4, structured_outputs={"choice": ["yes", "no"]})
    assert llm.generate("Is sepsis an emergency?", choice)[0].outputs[0].text in ("yes", "no")
    seen["offline"] = imported()

    server = ThreadServer(ServerSettings(served_model_name="m"), lambda: llm.engine)
    try:
        for path, body in (
            ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "logprobs": True, "top_logprobs": 2}),
            ("/v1/completions", {"prompt": "Sepsis is", "logprobs": 2}),
        ):
            reply = httpx.post(server.base + path, json={"model": "m", "max_tokens": 3, **body}, timeout=300)
            assert reply.status_code == 200, reply.text
    finally:
        server.stop()
    seen["server"] = imported()

    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["inference", "generate", "--text", "What is sepsis?", "--max-tokens", "3", "--json"])
    assert code == 0
    seen["cli"] = imported()
    print(json.dumps(seen))
    """
)


def test_gguf_model_runs_without_importing_transformers():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-4000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"offline": [], "server": [], "cli": []}
