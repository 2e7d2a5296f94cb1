"""Dynamic int8 on CPU against float32, on the embedded default model: is it worth its profile?

    python benchmarks/int8_cpu.py [--requests 16] [--max-tokens 64] [--rounds 2] [--json out.json]

Three measurements, each profile run in a fresh process so peak RSS is its own:
1. kernels: µs per call of the default model's four Linear shapes (summed) for float32 and the int8
   candidates: our native kernel (what `dynamic` runs), torch._int_mm, the weight-only int8 kernel,
   and torchao's int8 dynamic config when it is installed. This is what picked the kernels.
2. weights: RSS taken by every Linear layer of the model as float32, then as packed int8 (the kernel
   `dynamic` picks here).
3. generate: peak RSS (VmHWM, load included) and batched throughput of the same greedy workload under
   `--deployment-profile none` (float32), `cpu` and `edge_cpu_int8`, with the same KV size for all.
Targets (issue #4): Linear weight memory <= 0.3x float32; peak RSS <= 0.6x float32's; throughput >= it.
Exit status 1 when a target is missed. Timings on a shared machine are noisy: use --rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
PROFILES = ("none", "cpu", "edge_cpu_int8")
OVERRIDES = dict(
    device="cpu", max_model_len=512, max_num_seqs=16, max_num_batched_tokens=2048, kv_cache_space_gib=0.125
)


def rss(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


def model_shapes() -> list[tuple[int, int]]:
    """(in, out) of each Linear of one decoder layer of the default model, and the layer count."""
    from medvllm.loader import open_model

    cfg = open_model(None).hf_config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    qkv = (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * head_dim
    return [
        (cfg.hidden_size, qkv),
        (cfg.num_attention_heads * head_dim, cfg.hidden_size),
        (cfg.hidden_size, 2 * cfg.intermediate_size),
        (cfg.intermediate_size, cfg.hidden_size),
    ], cfg.num_hidden_layers


# --- 1. kernels ------------------------------------------------------------------------------------------
def kernel_candidates(weight: torch.Tensor):
    from medvllm.layers.linear import ReplicatedLinear
    from medvllm.quantization.dynamic_int8 import DynamicInt8Method

    layers = {}
    try:
        layers["native"] = ReplicatedLinear(weight.shape[1], weight.shape[0], method=DynamicInt8Method())
        layers["native"].weight.data.copy_(weight)
        layers["native"].process_weights_after_loading()
    except Exception as e:  # no compiler
        print(f"  native: skipped ({str(e)[:80]})", file=sys.stderr)
        layers.clear()
    scale = weight.abs().amax(1) / 127
    w_q = torch.round(weight / scale[:, None]).to(torch.int8)
    w_qt = w_q.t().contiguous()

    def int_mm(x):
        s = x.abs().amax(-1, keepdim=True) / 127
        x_q = torch.round(x / s).to(torch.int8)
        pad = max(0, 17 - x_q.shape[0])  # _int_mm wants more than 16 rows
        out = torch._int_mm(torch.nn.functional.pad(x_q, (0, 0, 0, pad)), w_qt)[: x.shape[0]]
        return out.float() * s * scale

    candidates = {
        "float32": lambda x: torch.nn.functional.linear(x, weight),
        **{f"{k} per-token (ours)": m for k, m in layers.items()},
        "torch._int_mm per-token": int_mm,
        "_weight_int8pack_mm (weight-only)": lambda x: torch._weight_int8pack_mm(x, w_q, scale),
    }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_

            lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=False)
            lin.weight.data.copy_(weight)
            quantize_(lin, Int8DynamicActivationInt8WeightConfig())
            candidates["torchao int8 dynamic"] = lin
    except Exception as e:  # not installed, or no CPU path in this version
        print(f"  torchao: skipped ({type(e).__name__}: {str(e)[:80]})", file=sys.stderr)
    return candidates


def bench_kernels(rows=(1, 16, 128), repeats=20) -> dict:
    shapes, _ = model_shapes()
    torch.manual_seed(0)
    totals: dict[str, dict[int, float]] = {}
    with torch.inference_mode():
        for n_in, n_out in shapes:
            weight = torch.randn(n_out, n_in) / n_in**0.5
            for name, fn in kernel_candidates(weight).items():
                for m in rows:
                    x = torch.randn(m, n_in)
                    for _ in range(3):
                        fn(x)
                    best = float("inf")
                    for _ in range(3):
                        t = time.perf_counter()
                        for _ in range(repeats):
                            fn(x)
                        best = min(best, (time.perf_counter() - t) / repeats)
                    totals.setdefault(name, {})[m] = totals.get(name, {}).get(m, 0.0) + best * 1e6
    return totals


# --- 2. weight memory (child process) ------------------------------------------------------------------
def child_weights() -> dict:
    from medvllm.layers.linear import ReplicatedLinear
    from medvllm.quantization.dynamic_int8 import DynamicInt8Method

    shapes, layers = model_shapes()
    method = DynamicInt8Method()
    ReplicatedLinear(64, 64, method=method).process_weights_after_loading()  # load the kernels first

    def build():
        modules = []
        for _ in range(layers):
            for n_in, n_out in shapes:
                m = ReplicatedLinear(n_in, n_out, **({"method": method} if quantize else {}))
                m.weight.data.normal_(0, 0.02)
                modules.append(m)
                if quantize:  # as the engine does: each layer quantized (float freed) as it is loaded
                    m.process_weights_after_loading()
        release_free_memory()
        return modules

    release_free_memory()
    base, quantize = rss(), False
    modules = build()
    float_rss, float_bytes = rss() - base, sum(m.weight.numel() * 4 for m in modules)
    del modules
    release_free_memory()
    base, quantize = rss(), True
    modules = build()
    int8_rss = rss() - base
    return {
        "float32_bytes": float_bytes,
        "float32_rss": float_rss,
        "int8_rss": int8_rss,
        "int8_accounted_bytes": sum(m.packed.nbytes for m in modules),
    }


def release_free_memory() -> None:
    from medvllm.engine.memory_pool import release_free_memory as release

    release()


# --- 3. generate (child process) ----------------------------------------------------------------------
def child_generate(profile: str, requests: int, max_tokens: int) -> dict:
    sys.path.insert(0, HERE)
    from workload import prompt_token_ids

    from medvllm import LLM, SamplingParams

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        llm = LLM(deployment_profile=profile, **OVERRIDES)
    loaded_rss, load_peak = rss(), rss("VmHWM")
    prompts = prompt_token_ids(llm.tokenizer, requests, min_len=20, max_len=200)
    params = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate(prompts[:2], SamplingParams(max_tokens=4, temperature=0))  # warm-up
    t = time.perf_counter()
    outs = llm.generate(prompts, params)
    elapsed = time.perf_counter() - t
    tokens = sum(len(o.outputs[0].token_ids) for o in outs)
    info = llm.runtime_info()
    return {
        "profile": profile,
        "tokens": tokens,
        "seconds": elapsed,
        "tok_per_s": tokens / elapsed,
        "peak_rss": rss("VmHWM"),
        "load_peak_rss": load_peak,
        "loaded_rss": loaded_rss,
        "quantization": info["quantization"],
        "memory_pool": info["memory_pool"],
    }


def run_child(*args: str) -> dict:
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2, help="generate runs per profile, interleaved")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        kind = args.child[0]
        result = (
            child_weights()
            if kind == "weights"
            else child_generate(args.child[1], int(args.child[2]), int(args.child[3]))
        )
        print(json.dumps(result))
        return 0

    report = {"threads": torch.get_num_threads(), "torch": torch.__version__, "overrides": OVERRIDES}
    if not args.skip_kernels:
        report["kernels_us"] = bench_kernels()
        print("## kernels: µs per call, the four Linear shapes of one layer summed\n")
        rows = sorted(next(iter(report["kernels_us"].values())))
        print("| kernel | " + " | ".join(f"{m} rows" for m in rows) + " |\n|---|" + "---|" * len(rows))
        for name, by_rows in report["kernels_us"].items():
            print(f"| {name} | " + " | ".join(f"{by_rows[m]:.0f}" for m in rows) + " |")
    w = report["weights"] = run_child("weights")
    print(
        f"\n## Linear weights\n\nfloat32 {w['float32_rss'] / 2**20:.1f} MiB RSS ({w['float32_bytes'] / 2**20:.1f} MiB "
        f"of values); int8 {w['int8_rss'] / 2**20:.1f} MiB RSS ({w['int8_accounted_bytes'] / 2**20:.1f} MiB "
        f"accounted): {w['int8_rss'] / w['float32_rss']:.3f}x"
    )
    runs = {name: [] for name in PROFILES}
    for _ in range(args.rounds):
        for name in PROFILES:
            runs[name].append(run_child("generate", name, str(args.requests), str(args.max_tokens)))
    report["generate"] = runs
    print(f"\n## generate: {args.requests} requests x {args.max_tokens} tokens, greedy; overrides {OVERRIDES}\n")
    print("| profile | tok/s (each round) | median tok/s | peak RSS MiB | load peak MiB |\n|---|---|---|---|---|")
    summary = {}
    for name, rs in runs.items():
        tps = [r["tok_per_s"] for r in rs]
        summary[name] = {"tok_per_s": statistics.median(tps), "peak_rss": max(r["peak_rss"] for r in rs)}
        print(
            f"| {name} | {', '.join(f'{t:.1f}' for t in tps)} | {summary[name]['tok_per_s']:.1f} | "
            f"{summary[name]['peak_rss'] / 2**20:.0f} | {max(r['load_peak_rss'] for r in rs) / 2**20:.0f} |"
        )
    fp32 = summary["none"]
    checks = {"weights <= 0.3x": w["int8_rss"] <= 0.3 * w["float32_rss"]}
    for name in PROFILES[1:]:
        checks[f"{name} peak RSS <= 0.6x"] = summary[name]["peak_rss"] <= 0.6 * fp32["peak_rss"]
        checks[f"{name} throughput >= float32"] = summary[name]["tok_per_s"] >= fp32["tok_per_s"]
    report["checks"] = checks
    print("\n## targets\n")
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'} {name}")
    print(
        "\nratios: "
        + ", ".join(
            f"{n}: RSS {summary[n]['peak_rss'] / fp32['peak_rss']:.2f}x, "
            f"throughput {summary[n]['tok_per_s'] / fp32['tok_per_s']:.2f}x"
            for n in PROFILES[1:]
        )
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
