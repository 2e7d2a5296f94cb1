"""A real uvicorn server on a loopback port over a tiny random model, for the server tests that need no
real model: fast to build and load, and its generated text checked against the offline LLM."""

from __future__ import annotations

import json
import socket
import threading
import time

import httpx
import uvicorn

from medvllm.server import ServerSettings, create_app

ENGINE = dict(max_model_len=512, max_num_batched_tokens=512, num_kvcache_blocks=96, device="cpu")
CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w3{% endif %}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_tiny_folder(folder) -> str:
    """A tiny random Llama folder whose tokenizer has a (trivial) chat template."""
    from tests.tiny_models import build_tiny

    build_tiny("llama", folder)
    cfg_path = folder / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["chat_template"] = CHAT_TEMPLATE
    cfg_path.write_text(json.dumps(cfg))
    return str(folder)


class ThreadServer:
    """A real uvicorn server on a loopback port, in a thread of this process."""

    def __init__(self, settings: ServerSettings, load):
        self.app = create_app(settings, load)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", access_log=False)
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(self.base + "/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the test server did not become ready")

    @property
    def state(self):
        return self.app.state.served

    def stop(self):
        self.server.should_exit = True
        self.thread.join(30)


def wait_idle(state, timeout: float = 20.0) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        stats = state.engine.stats()
        if stats["num_running"] == 0 and stats["num_waiting"] == 0 and stats["kv_cache_usage"] == 0:
            return stats
        time.sleep(0.05)
    raise AssertionError(f"the engine did not go idle: {state.engine.stats()}")
