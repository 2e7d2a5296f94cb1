"""Structured outputs' cost, in one run on the default model: N concurrent requests constrained by a
clinical JSON Schema against the same requests unconstrained, each producing the same number of tokens
under the same max_tokens, plus the time to first token a new schema adds (its compile) and a cached
one adds, and the time spent building masks per step.

Same max_tokens on both sides: the scheduler admits a request only when the KV blocks it may grow to
(prompt + max_tokens) fit, so a constrained run asking for 768 tokens against a free run asking for its
~95 admits fewer requests at once and measures the KV pool, not the grammar. An untimed constrained run
finds each request's length; both timed runs then ask for that many tokens (seeded, so the constrained
run writes the same answers and ends on its grammar; the free run ignores EOS).

    python benchmarks/structured.py [--requests 32 64] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "peers"))
from common import cpu_summary  # noqa: E402

from medvllm import LLM, SamplingParams  # noqa: E402
from medvllm.quality.extraction import EXTRACTION_MAX_TOKENS, SCHEMAS, load_extraction_set  # noqa: E402
from medvllm.structured import StructuredOutputsParams  # noqa: E402


def throughput(llm: LLM, n: int) -> tuple[float, float, float, int]:
    """(constrained tok/s, unconstrained tok/s, mask ms per step, answers equal to the untimed run's)
    over n concurrent requests."""
    items = load_extraction_set()
    items = [items[i % len(items)] for i in range(n)]
    messages = [item.messages() for item in items]

    def constrained(max_tokens: list[int]) -> list[SamplingParams]:
        return [
            SamplingParams(
                temperature=0.8,
                seed=i,
                max_tokens=k,
                structured_outputs=StructuredOutputsParams(json=item.schema),
            )
            for i, (item, k) in enumerate(zip(items, max_tokens))
        ]

    # untimed: compiles the schemas and finds each answer's length
    found = llm.chat(messages, constrained([EXTRACTION_MAX_TOKENS] * n))
    masks = llm.engine.runner.masks
    before = (masks.total_s, masks.num_steps)
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.chat(messages, constrained([len(o.outputs[0].token_ids) for o in found]))
    with_grammar = time.perf_counter() - t
    lengths = [len(o.outputs[0].token_ids) for o in outs]
    mask_ms = 1000 * (masks.total_s - before[0]) / max(1, masks.num_steps - before[1])
    free = [SamplingParams(temperature=0.8, seed=i, max_tokens=k, ignore_eos=True) for i, k in enumerate(lengths)]
    llm.reset_prefix_cache()
    t = time.perf_counter()
    llm.chat(messages, free)
    without = time.perf_counter() - t
    same = sum(a.outputs[0].token_ids == b.outputs[0].token_ids for a, b in zip(found, outs))
    return sum(lengths) / with_grammar, sum(lengths) / without, mask_ms, same


def ttft(llm: LLM, schema: dict | None) -> float:
    params = SamplingParams(
        temperature=0,
        max_tokens=2,
        structured_outputs=None if schema is None else StructuredOutputsParams(json=schema),
    )
    prompt = llm.encode_chat(load_extraction_set()[4].messages())
    t = time.perf_counter()
    for _ in llm.stream(prompt, params):
        return time.perf_counter() - t
    raise RuntimeError("no token")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, nargs="*", default=[32, 64])
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    llm = LLM(max_model_len=2048, max_num_seqs=max(args.requests))
    print(f"machine: {cpu_summary()}; default model; temperature 0.8, seeded; {args.repeats} repeat(s), medians")
    for n in args.requests:
        runs = [throughput(llm, n) for _ in range(args.repeats)]
        on, off, mask_ms, same = (statistics.median(r[i] for r in runs) for i in range(4))
        print(
            f"{n} requests: constrained {on:.1f} tok/s, unconstrained {off:.1f} tok/s, ratio {on / off:.2f}; "
            f"masks {mask_ms:.2f} ms per step (on their own thread, during the forward pass); "
            f"{same:.0f}/{n} answers as in the untimed run"
        )
    summary = SCHEMAS["summary"]
    free = statistics.median(ttft(llm, None) for _ in range(3))
    new = []
    for i in range(3):  # a schema never seen: a description makes it new to the cache, not to the engine
        new.append(ttft(llm, dict(summary, description=f"fresh {time.time()} {i}")))
    cached = statistics.median(ttft(llm, summary) for _ in range(3))
    print(
        f"time to first token: unconstrained {1000 * free:.0f} ms, new schema {1000 * (statistics.median(new) - free):+.0f} ms "
        f"(compile), cached schema {1000 * (cached - free):+.0f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
