"""Measures one system in this fresh process and writes its figures as JSON (peak RSS included).

compare_cpu.py starts one of these per system, so each system's memory is its own:
    python benchmarks/peers/run_system.py SYSTEM WORK.json OUT.json [--profile P] [--method M] [--dtype D] ...
SYSTEM: medvllm | transformers | llama.cpp | vllm. The model file is the workload's (spec "model").
"""

from __future__ import annotations

import argparse
import json
import statistics

import common


def run(system: str, work: dict, args) -> dict:
    spec = work["spec"]
    if system in ("medvllm", "transformers"):
        import torch
        import torch_systems

        torch.set_num_threads(spec["threads"])
        if system == "medvllm":
            return torch_systems.medvllm(spec, work, args.profile, args.method)
        return torch_systems.transformers(spec, work, args.dtype)
    if system == "llama.cpp":
        import llama_cpp

        from medvllm.loader import default_model_path

        model = spec.get("model") or default_model_path()
        biggest = work["batched"][str(max(int(n) for n in work["batched"]))]
        prompt_len = round(statistics.mean(len(p) for p in biggest))
        runs = [llama_cpp.measure(model, spec, prompt_len) for _ in range(spec["repeats"])]
        return {
            "label": f"native build, {spec['threads']} threads, best of -fa on/off, "
            f"batched prompts {prompt_len} tokens each",
            "runs": runs,
            "startup_s": [llama_cpp.startup_s(model, spec["threads"])],
        }
    if system == "vllm":
        import vllm_cpu

        return vllm_cpu.measure(work, args.kv_gib, args.mode)
    raise SystemExit(f"unknown system {system!r}: use medvllm, transformers, llama.cpp or vllm")


def summarize(raw: dict) -> dict:
    """Medians over the repeats, and this process's peak resident memory (its children's included)."""
    if raw.get("status", "ok") != "ok":
        return {"status": raw["status"], "peak_rss_bytes": common.own_peak_rss_bytes()}
    out = {"status": "ok", "label": raw["label"], **common.medians(raw["runs"])}
    out["startup_s"] = statistics.median(raw["startup_s"]) if raw.get("startup_s") else None
    out["peak_rss_bytes"] = common.own_peak_rss_bytes()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("system")
    ap.add_argument("work")
    ap.add_argument("out")
    ap.add_argument("--profile", default="auto")
    ap.add_argument("--method", help="Med-vLLM: quantization_method over the profile's")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--kv-gib", type=int, default=1)
    ap.add_argument("--mode", default="inproc", choices=["inproc", "mp"])
    args = ap.parse_args()
    with open(args.work) as f:
        work = json.load(f)
    result = summarize(run(args.system, work, args))
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
