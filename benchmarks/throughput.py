"""Offline throughput: Med-vLLM against transformers.generate in the same run, same weights and dtype.

Batched: 64 prompts of 20-200 tokens, 128 output tokens each (ignore_eos); transformers runs them in
batches of 32 with left padding. Single stream: a 30-token prompt, 128 tokens. Prints tokens/s and
ratios (medians over --repeats runs).

    python benchmarks/throughput.py [--requests 64] [--repeats 1] [--skip-hf] [--profile none]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from workload import prompt_token_ids  # noqa: E402


def ours_batched(llm, prompts, max_tokens):
    from medvllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    # every repeat from a cold prefix cache: prefixes the prompts share are reused within a run, as in
    # the first, never the previous repeat's whole prompts
    llm.reset_prefix_cache()
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def ours_single(llm, prompt, max_tokens):
    from medvllm import SamplingParams

    params = SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)
    t0 = time.perf_counter()
    first = None
    for _ in llm.stream(prompt, params):
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return (max_tokens - 1) / (end - first), first - t0


def hf_batched(model, prompts, max_tokens, batch_size, pad_id):
    produced, t = 0, time.perf_counter()
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=pad_id,
            )
        produced += (out.shape[1] - width) * len(chunk)
    return produced / (time.perf_counter() - t)


def hf_single(model, prompt, max_tokens, pad_id):
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        """generate() hands a streamer the prompt first, then each new token: note the first token."""

        calls, first = 0, None

        def put(self, value):
            self.calls += 1
            if self.calls == 2:
                self.first = time.perf_counter()

        def end(self):
            pass

    streamer = FirstToken()
    t0 = time.perf_counter()
    with torch.no_grad():
        model.generate(
            torch.tensor([prompt]),
            attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad_id,
            streamer=streamer,
        )
    end = time.perf_counter()
    return (max_tokens - 1) / (end - streamer.first), streamer.first - t0


def load_hf(dtype, path=None):
    """transformers' own GGUF loader on `path` (default: the embedded model)."""
    from transformers import AutoModelForCausalLM

    from medvllm.loader import default_model_path

    path = path or default_model_path()
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=dtype
    ).eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--profile", default="none", help="deployment profile for Med-vLLM (default: none = fp32)")
    ap.add_argument("--skip-hf", action="store_true", help="measure Med-vLLM only")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from medvllm import LLM

    t = time.perf_counter()
    llm = LLM(deployment_profile=args.profile)
    load_s = time.perf_counter() - t
    info = llm.runtime_info()
    prompts = prompt_token_ids(llm.tokenizer, args.requests)
    single = prompt_token_ids(llm.tokenizer, 1, 30, 30, seed=1)[0]
    ours_single(llm, single, 8)  # warm-up

    rows = {}
    rows["medvllm"] = [
        (ours_batched(llm, prompts, args.max_tokens), *ours_single(llm, single, args.max_tokens))
        for _ in range(args.repeats)
    ]
    if not args.skip_hf:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(info["dtype"], torch.float32)
        model = load_hf(dtype)
        pad = llm.tokenizer.pad_token_id if llm.tokenizer.pad_token_id is not None else 0
        rows["transformers"] = [
            (
                hf_batched(model, prompts, args.max_tokens, args.hf_batch_size, pad),
                *hf_single(model, single, args.max_tokens, pad),
            )
            for _ in range(args.repeats)
        ]

    med = {k: [statistics.median(col) for col in zip(*v)] for k, v in rows.items()}
    print(
        f"model: {info['model']}  dtype: {info['dtype']}  quantization: {info['quantization']}  "
        f"threads: {args.threads}  load: {load_s:.1f}s  repeats: {args.repeats} (medians)"
    )
    print(
        f"workload: {args.requests} prompts of 20-200 tokens x {args.max_tokens} output tokens; "
        f"single stream: 30-token prompt x {args.max_tokens}"
    )
    print(f"{'system':<14}{'batched tok/s':>15}{'1-stream tok/s':>16}{'TTFT ms':>10}")
    for name, (batched, decode, ttft) in med.items():
        print(f"{name:<14}{batched:>15.1f}{decode:>16.1f}{ttft * 1000:>10.1f}")
    if "transformers" in med:
        ours, hf = med["medvllm"], med["transformers"]
        print(
            f"{'ratio':<14}{ours[0] / hf[0]:>14.2f}x{ours[1] / hf[1]:>15.2f}x{hf[2] / ours[2]:>9.2f}x"
            "  (TTFT ratio: theirs / ours)"
        )
    if args.repeats > 1:  # the first run of a fresh engine also maps its KV blocks in
        for name, runs in rows.items():
            print(f"{name} batched tok/s, run by run: {', '.join(f'{r[0]:.1f}' for r in runs)}")


if __name__ == "__main__":
    main()
