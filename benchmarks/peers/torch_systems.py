"""Med-vLLM and transformers, measured in this process with benchmarks/throughput.py's functions."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

import common  # noqa: F401  (puts benchmarks/ on sys.path)
from throughput import hf_batched, hf_single, load_hf, ours_batched, ours_single

HERE = os.path.dirname(os.path.abspath(__file__))
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_medvllm(profile: str, prefix_caching: bool):
    """LLM under `profile` ("auto": what this machine auto-selects; "none": Config defaults) -> (llm, label)."""
    from medvllm import LLM
    from medvllm.deployment import resolve
    from medvllm.hardware import detect
    overrides = {"enable_prefix_caching": prefix_caching}
    resolution = resolve(overrides, None if profile == "auto" else profile, os.environ, detect())
    llm = LLM(config=resolution.config)
    info = llm.runtime_info()
    name = resolution.profile_name or "no profile"
    label = f"{'auto: ' if resolution.how_chosen == 'auto' else ''}{name}, {info['dtype']}"
    if info.get("quantization"):
        label += f", {info['quantization']}"
    return llm, label


def medvllm(spec: dict, work: dict, profile: str) -> dict:
    llm, label = build_medvllm(profile, spec["prefix_caching"])
    ours_single(llm, work["single"], 8)  # warm-up
    runs = []
    for _ in range(spec["repeats"]):
        decode, ttft = ours_single(llm, work["single"], spec["max_tokens"])
        runs.append({
            "batched": {str(n): ours_batched(llm, prompts, spec["max_tokens"]) for n, prompts in work["batched"].items()},
            "single_decode": decode, "ttft_s": ttft,
        })
    return {"label": label, "runs": runs,
            "startup_s": [first_token_s(["medvllm", "--profile", profile], spec) for _ in range(spec["repeats"])]}


def transformers(spec: dict, work: dict, dtype: str) -> dict:
    from medvllm.loader import open_model
    tokenizer = open_model(None).tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_hf(DTYPES[dtype])
    hf_single(model, work["single"], 8, pad)  # warm-up
    size = spec["hf_batch_size"]
    runs = []
    for _ in range(spec["repeats"]):
        decode, ttft = hf_single(model, work["single"], spec["max_tokens"], pad)
        runs.append({
            "batched": {str(n): hf_batched(model, prompts, spec["max_tokens"], size, pad)
                        for n, prompts in work["batched"].items()},
            "single_decode": decode, "ttft_s": ttft,
        })
    return {"label": f"{dtype}, batches of {size}, GGUF dequantized by transformers", "runs": runs,
            "startup_s": [first_token_s(["transformers", "--dtype", dtype], spec)]}


def first_token_s(args: list[str], spec: dict) -> float:
    """Seconds from launching a fresh Python process to its first generated token."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "first_token.py"), *args,
                             "--threads", str(spec["threads"])], stdout=subprocess.PIPE, text=True, env=env)
    for line in proc.stdout:
        if line.strip() == "FIRST_TOKEN":
            elapsed = time.perf_counter() - t0
            break
    else:
        proc.wait()
        raise RuntimeError(f"first_token.py {' '.join(args)} exited {proc.returncode} before a token")
    proc.stdout.close()
    proc.wait()
    return elapsed
