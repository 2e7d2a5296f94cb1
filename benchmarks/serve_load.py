"""Load test for a running OpenAI-compatible server (Med-vLLM's `medvllm serve`, or any other).

N clients, each sending one streaming request after another for T seconds; requests still in flight
at T run to the end and count. Prints requests/s, output tokens/s, time to first token p50/p99 and
errors (0 is expected while the load stays below the server's queue limit).

    python -m medvllm.cli serve --api-key K &                    # wait until /health answers 200
    python benchmarks/serve_load.py --base-url http://127.0.0.1:8000/v1 --api-key K --clients 8 --duration 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def one_request(client, model: str, prompt: str, max_tokens: int, chat: bool) -> tuple[float | None, int]:
    """Streams one request; returns (seconds to the first token, output tokens from `usage`)."""
    started = time.perf_counter()
    ttft, tokens = None, 0
    common = dict(
        model=model, max_tokens=max_tokens, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    if chat:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        stream = await client.completions.create(prompt=prompt, **common)
    async for chunk in stream:
        if chunk.choices and ttft is None:
            c = chunk.choices[0]
            if c.delta.content if chat else c.text:
                ttft = time.perf_counter() - started
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    return ttft, tokens


async def run(args) -> dict:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=args.timeout)
    model = args.model or (await client.models.list()).data[0].id
    ttfts: list[float] = []
    totals = {"requests": 0, "tokens": 0}
    errors: list[str] = []
    started = time.perf_counter()
    deadline = started + args.duration

    async def worker(i: int) -> None:
        n = 0
        while time.perf_counter() < deadline:
            prompt = PROMPTS[(i + n) % len(PROMPTS)]
            n += 1
            try:
                ttft, tokens = await one_request(client, model, prompt, args.max_tokens, args.chat)
            except Exception as e:  # noqa: BLE001 - every failure is counted and reported
                errors.append(f"{type(e).__name__}: {e}")
                continue
            totals["requests"] += 1
            totals["tokens"] += tokens
            if ttft is not None:
                ttfts.append(ttft)

    await asyncio.gather(*(worker(i) for i in range(args.clients)))
    elapsed = time.perf_counter() - started
    await client.close()
    return {
        "model": model,
        "clients": args.clients,
        "duration_s": args.duration,
        "elapsed_s": round(elapsed, 2),
        "max_tokens": args.max_tokens,
        "endpoint": "chat" if args.chat else "completions",
        "requests": totals["requests"],
        "requests_per_s": round(totals["requests"] / elapsed, 3),
        "output_tokens": totals["tokens"],
        "output_tokens_per_s": round(totals["tokens"] / elapsed, 2),
        "ttft_p50_s": _round(percentile(ttfts, 50)),
        "ttft_p99_s": _round(percentile(ttfts, 99)),
        "errors": len(errors),
        "first_errors": errors[:3],
    }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    p.add_argument("--api-key", default="none", help="the server's key (any text when it has none)")
    p.add_argument("--model", help="model id (default: the first one /v1/models lists)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--duration", type=float, default=20.0, help="seconds during which new requests start")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--chat", action="store_true", help="use /v1/chat/completions (default /v1/completions)")
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = p.parse_args()
    result = asyncio.run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(
        f"{result['clients']} clients x {result['duration_s']:g} s against {args.base_url} "
        f"({result['endpoint']}, model {result['model']}, max_tokens {result['max_tokens']}, greedy)"
    )
    for label, key in [
        ("requests", "requests"),
        ("requests/s", "requests_per_s"),
        ("output tokens/s", "output_tokens_per_s"),
        ("TTFT p50 (s)", "ttft_p50_s"),
        ("TTFT p99 (s)", "ttft_p99_s"),
        ("errors", "errors"),
        ("wall time (s)", "elapsed_s"),
    ]:
        print(f"  {label:<16} {result[key]}")
    for message in result["first_errors"]:
        print(f"  error: {message}")


if __name__ == "__main__":
    main()
