"""The clinical extraction set (medvllm/quality/extraction.py) through structured outputs: every output
must parse and validate with jsonschema, and finish because its grammar completed (a run that reaches
max_tokens fails). Through the Python API (LLM.chat) and through the server with the official openai
client (response_format json_schema, and forced tool calls), at temperature 0 and at 0.8 with seeds.

    python benchmarks/clinical_extraction.py [--seeds 1 2 3] [--skip-server] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "peers"))
from common import cpu_summary  # noqa: E402

from medvllm.quality.extraction import EXTRACTION_MAX_TOKENS, check, load_extraction_set  # noqa: E402


def settings(seeds: list[int]) -> list[tuple[float, int | None]]:
    return [(0.0, None)] + [(0.8, s) for s in seeds]


def report(name: str, n: int, failures: list[str]) -> tuple[str, int, list[str]]:
    """Prints one setting's line (and its failures) as soon as it is done."""
    print(f"{name:<45} {n - len(failures)}/{n} valid", flush=True)
    for f in failures:
        print(f"    {f}", flush=True)
    return name, n, failures


def run_python(llm, items, seeds) -> list[tuple[str, int, list[str]]]:
    from medvllm import SamplingParams
    from medvllm.structured import StructuredOutputsParams

    rows = []
    for temperature, seed in settings(seeds):
        params = [
            SamplingParams(
                temperature=temperature,
                seed=seed,
                max_tokens=EXTRACTION_MAX_TOKENS,
                structured_outputs=StructuredOutputsParams(json=item.schema),
            )
            for item in items
        ]
        outs = llm.chat([item.messages() for item in items], params)
        failures = [
            f"{item.id}: {why}"
            for item, out in zip(items, outs)
            if (why := check(item, out.outputs[0].text, out.outputs[0].finish_reason))
        ]
        rows.append(report(f"python  T={temperature} seed={seed}", len(items), failures))
    return rows


def run_server(engine, items, seeds) -> list[tuple[str, int, list[str]]]:
    import openai

    server = start_server(engine)
    client = openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0, timeout=1800)
    model = client.models.list().data[0].id

    def ask(item, temperature, seed, mode):
        kw = dict(model=model, messages=item.messages(), temperature=temperature, seed=seed)
        if mode == "response_format":
            rf = {"type": "json_schema", "json_schema": {"name": item.task, "schema": item.schema, "strict": True}}
            c = client.chat.completions.create(response_format=rf, max_tokens=EXTRACTION_MAX_TOKENS, **kw).choices[0]
            return check(item, c.message.content, c.finish_reason)
        tool = {"type": "function", "function": {"name": f"record_{item.task}", "parameters": item.schema}}
        choice = {"type": "function", "function": {"name": f"record_{item.task}"}}
        c = client.chat.completions.create(tools=[tool], tool_choice=choice, max_tokens=EXTRACTION_MAX_TOKENS, **kw)
        c = c.choices[0]
        return check(item, c.message.tool_calls[0].function.arguments, c.finish_reason)

    rows = []
    with ThreadPoolExecutor(len(items)) as pool:  # all notes at once: they share the server's batch
        for mode in ("response_format", "tools"):
            for temperature, seed in settings(seeds):
                whys = list(pool.map(ask, items, *zip(*[(temperature, seed, mode)] * len(items))))
                failures = [f"{it.id}: {why}" for it, why in zip(items, whys) if why]
                rows.append(report(f"server  {mode} T={temperature} seed={seed}", len(items), failures))
    return rows


def start_server(engine) -> str:
    """A real uvicorn server on a loopback port, in a thread, over `engine`; returns its base URL."""
    import socket
    import threading

    import httpx
    import uvicorn

    from medvllm.server import ServerSettings, create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServerSettings(), lambda: engine)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    threading.Thread(target=uvicorn.Server(config).run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            if httpx.get(base + "/health").status_code == 200:
                return base
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("the server did not become ready")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="*", default=[1, 2, 3])
    ap.add_argument("--server-seeds", type=int, nargs="*", default=[1])
    ap.add_argument("--limit", type=int, help="the first N notes only")
    ap.add_argument("--skip-server", action="store_true")
    args = ap.parse_args()
    from medvllm import LLM

    items = load_extraction_set()[: args.limit]
    print(f"machine: {cpu_summary()}; {len(items)} notes, max_tokens={EXTRACTION_MAX_TOKENS}")
    started = time.perf_counter()
    rows = run_python(LLM(max_model_len=2048), items, args.seeds)
    if not args.skip_server:
        rows += run_server(LLM(max_model_len=2048).engine, items, args.server_seeds)
    total = sum(n for _, n, _ in rows)
    bad = sum(len(failures) for _, _, failures in rows)
    print(json.dumps({"outputs": total, "valid": total - bad, "seconds": round(time.perf_counter() - started, 1)}))
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
