"""Med-vLLM and transformers, measured in this process with benchmarks/throughput.py's functions.

Their start-up is measured apart (first_token.py in a fresh process, started by compare_cpu.py), so the
process that measures throughput never holds a second copy of the model.
"""

from __future__ import annotations

import os

import common  # noqa: F401  (puts benchmarks/ on sys.path)
import torch
from throughput import hf_batched, hf_single, load_hf, ours_batched, ours_single

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_medvllm(profile: str, prefix_caching: bool, model: str | None = None, method: str | None = None):
    """LLM under `profile` ("auto": what this machine auto-selects; "none": Config defaults) on `model`
    (None: the default one), with `method` as quantization_method over the profile's ("none": no
    quantization) -> (llm, label)."""
    from medvllm import LLM
    from medvllm.deployment import resolve
    from medvllm.deployment.model_info import model_info_for
    from medvllm.hardware import detect

    overrides = {"enable_prefix_caching": prefix_caching}
    if model is not None:
        overrides["model"] = model
    if method is not None:
        overrides["quantization_method"] = None if method == "none" else method
    resolution = resolve(overrides, None if profile == "auto" else profile, os.environ, detect(), model_info_for(model))
    llm = LLM(config=resolution.config)
    info = llm.runtime_info()
    name = resolution.profile_name or "no profile"
    label = f"{'auto: ' if resolution.how_chosen == 'auto' else ''}{name}, {info['dtype']}"
    quant = info.get("quantization")
    if quant:
        label += f", {quant.get('method', quant) if isinstance(quant, dict) else quant}"
    return llm, label


def medvllm(spec: dict, work: dict, profile: str, method: str | None = None) -> dict:
    llm, label = build_medvllm(profile, spec["prefix_caching"], spec.get("model"), method)
    ours_single(llm, work["single"], 8)  # warm-up
    runs = []
    for _ in range(spec["repeats"]):
        decode, ttft = ours_single(llm, work["single"], spec["max_tokens"])
        runs.append(
            {
                "batched": {
                    str(n): ours_batched(llm, prompts, spec["max_tokens"]) for n, prompts in work["batched"].items()
                },
                "single_decode": decode,
                "ttft_s": ttft,
            }
        )
    return {"label": label, "runs": runs}


def transformers(spec: dict, work: dict, dtype: str) -> dict:
    from medvllm.loader import open_model

    tokenizer = open_model(spec.get("model")).tokenizer
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = load_hf(DTYPES[dtype], spec.get("model"))
    hf_single(model, work["single"], 8, pad)  # warm-up
    size = spec["hf_batch_size"]
    runs = []
    for _ in range(spec["repeats"]):
        decode, ttft = hf_single(model, work["single"], spec["max_tokens"], pad)
        runs.append(
            {
                "batched": {
                    str(n): hf_batched(model, prompts, spec["max_tokens"], size, pad)
                    for n, prompts in work["batched"].items()
                },
                "single_decode": decode,
                "ttft_s": ttft,
            }
        )
    return {"label": f"{dtype}, batches of {size}, from_pretrained(gguf_file=...)", "runs": runs}
