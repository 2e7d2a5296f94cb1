"""Start-up and memory of every model file under every Med-vLLM CPU configuration, beside llama.cpp.

For each --models file and each --medvllm configuration (PROFILE or PROFILE+METHOD), a fresh Python
process runs to its first generated token. Recorded: the wall time from launching it to that token,
its imports and its `LLM(...)` load inside it, its peak RSS (VmHWM at the first token), the bytes of the
KV pool the engine allocated, and the file's size. llama.cpp (when built): llama-batched-bench on the
same file generating one token (an upper bound: it also warms up), its peak RSS from wait4. Medians
over --repeats. Prints one markdown table, with the issue's criterion as pass/fail columns:

    peak RSS <= file size + KV cache + 300 MiB        first token <= 2 s + 1 s per GiB of file

    python benchmarks/startup_memory.py --models default,llama-1b --medvllm auto,none,none+dynamic,edge_cpu_int8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402
import selection  # noqa: E402

MIB, GIB = 2**20, 2**30
RSS_SLACK = 300 * MIB  # the criterion's allowance above the file and the KV cache
TIME_BASE_S, TIME_PER_GIB_S = 2.0, 1.0
DEFAULT_RUNS = "auto,none,none+dynamic,edge_cpu_int8"


def budgets(file_bytes: int, kv_bytes: int | None) -> tuple[int | None, float]:
    """(peak RSS allowed, seconds to first token allowed) for a file and the KV cache it runs with."""
    rss = None if kv_bytes is None else file_bytes + kv_bytes + RSS_SLACK
    return rss, TIME_BASE_S + TIME_PER_GIB_S * file_bytes / GIB


def child(run: str, model: str, threads: int, launched: float) -> None:
    """In the fresh process: load, generate one token, report. FIRST_TOKEN is printed as soon as the
    token exists, so the parent's clock stops there; the figures follow on the next line."""
    import torch
    import torch_systems

    from medvllm import SamplingParams

    torch.set_num_threads(threads)
    spec = selection.medvllm_runs(run, "auto", None)[0]
    t0 = time.time()
    llm, label = torch_systems.build_medvllm(spec.profile, False, model, spec.method)
    loaded = time.time()
    llm.generate("Sepsis is", SamplingParams(temperature=0, max_tokens=1))
    peak = status_bytes("VmHWM")
    print("FIRST_TOKEN", flush=True)
    pools = [llm.engine.runner.kv_cache, llm.engine.runner.window_cache]  # the window pool: Gemma's local layers
    info = llm.runtime_info()
    print(
        json.dumps(
            {
                "label": f"{label}, KV {info['kv_cache_dtype']}",
                "imports_s": t0 - launched,
                "load_s": loaded - t0,
                "peak_rss_bytes": peak,
                "kv_bytes": sum(kv.numel() * kv.element_size() for kv in pools if kv is not None),
            }
        ),
        flush=True,
    )


def status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def measure_medvllm(run: str, model: str, threads: int) -> dict:
    """One fresh process: the wall time to its FIRST_TOKEN line, and the figures it reports after it."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    launched = time.time()
    cmd = [sys.executable, os.path.abspath(__file__), "--child", run, "--child-model", model]
    cmd += ["--threads", str(threads), "--launched", repr(launched)]
    first, figures = None, None
    with tempfile.TemporaryFile("w+") as log:  # stderr to a file: a full pipe would stall the child
        done = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        for line in done.stdout:
            if line.strip() == "FIRST_TOKEN":
                first = time.time() - launched
            elif first is not None and line.startswith("{"):
                figures = json.loads(line)
        if done.wait() != 0 or figures is None:
            log.seek(0)
            last = [x for x in log.read().strip().splitlines() if x.strip()][-1:] or ["no output"]
            return {"status": f"failed: exit code {done.returncode}: {last[0][:300]}"}
    return {"status": "ok", "first_token_s": first, **figures}


def measure_llama_cpp(model: dict, threads: int) -> dict:
    import llama_cpp

    if llama_cpp.bin_dir() is None:
        return {"status": "not built: run bash benchmarks/peers/llama_cpp.sh"}
    try:
        seconds, peak = llama_cpp.startup(model["path"], threads)
    except RuntimeError as e:
        return {"status": f"failed: {e}"}
    return {
        "status": "ok",
        "label": f"llama-batched-bench, n_ctx {llama_cpp.STARTUP_CTX}, f16 KV",
        "first_token_s": seconds,
        "peak_rss_bytes": peak,
        "kv_bytes": llama_cpp_kv_bytes(model["path"], llama_cpp.STARTUP_CTX),
    }


def llama_cpp_kv_bytes(path: str, ctx: int) -> int:
    """llama.cpp's f16 K and V for `ctx` tokens, from the file's metadata (its default cache type)."""
    from medvllm.loader.gguf_file import GGUFFile

    meta = GGUFFile(path).metadata
    arch = meta["general.architecture"]
    heads = meta[f"{arch}.attention.head_count"]
    head_dim = meta.get(f"{arch}.attention.key_length") or meta[f"{arch}.embedding_length"] // heads
    kv_heads = meta.get(f"{arch}.attention.head_count_kv", heads)
    return 2 * meta[f"{arch}.block_count"] * ctx * kv_heads * head_dim * 2


def repeated(measure, repeats: int) -> dict:
    """Medians of the numeric figures over `repeats` fresh processes; the first failure stands."""
    runs = []
    for _ in range(repeats):
        r = measure()
        if r.get("status") != "ok":
            return r
        runs.append(r)
    out = dict(runs[0])
    for key, value in runs[0].items():
        if isinstance(value, (int, float)):
            out[key] = statistics.median(r[key] for r in runs)
    return out


def render(rows: list[dict]) -> str:
    head = (
        "| model | file MiB | configuration | what ran | imports s | load s | first token s | KV MiB | "
        "peak RSS MiB | RSS budget MiB | RSS ok | time budget s | time ok |"
    )
    lines = [head, "|---" * head.count(" | ") + "|---|"]
    for r in rows:
        model, fig = r["model"], r["result"]
        start = f"| {model['file']} | {model['bytes'] / MIB:.0f} | {r['config']} |"
        if fig.get("status") != "ok":
            lines.append(start + f" {fig.get('status')} |" + " — |" * 9)
            continue
        rss_budget, time_budget = budgets(model["bytes"], fig.get("kv_bytes"))
        peak, first = fig["peak_rss_bytes"], fig["first_token_s"]
        cells = [
            fig.get("label", ""),
            _num(fig.get("imports_s"), 1),
            _num(fig.get("load_s"), 1),
            _num(first, 1),
            _num(fig["kv_bytes"] / MIB if fig.get("kv_bytes") is not None else None, 0),
            _num(peak / MIB, 0),
            _num(rss_budget / MIB if rss_budget is not None else None, 0),
            "—" if rss_budget is None else ("pass" if peak <= rss_budget else "FAIL"),
            _num(time_budget, 1),
            "pass" if first <= time_budget else "FAIL",
        ]
        lines.append(start + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


def _num(value, decimals: int) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="default,llama-1b", help="comma list: default, llama-1b, or .gguf paths")
    ap.add_argument("--medvllm", default=DEFAULT_RUNS, help="comma list of PROFILE or PROFILE+METHOD")
    ap.add_argument("--no-llama-cpp", action="store_true", help="leave llama.cpp out")
    ap.add_argument("--repeats", type=int, default=1, help="fresh processes per row (medians)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--child-model", help=argparse.SUPPRESS)
    ap.add_argument("--launched", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.child_model, args.threads, args.launched)
        return
    runs = selection.medvllm_runs(args.medvllm, "auto", None)  # a bad entry stops here, before any run
    models = [selection.describe(selection.model_path(name)) for name in selection.split(args.models)]
    rows = []
    for model in models:
        for run in runs:
            print(f"{model['file']}: Med-vLLM {run.label} ...", file=sys.stderr, flush=True)
            result = repeated(lambda r=run, m=model: measure_medvllm(r.label, m["path"], args.threads), args.repeats)
            rows.append({"model": model, "config": f"Med-vLLM {run.label}", "result": result})
        if not args.no_llama_cpp:
            print(f"{model['file']}: llama.cpp ...", file=sys.stderr, flush=True)
            result = repeated(lambda m=model: measure_llama_cpp(m, args.threads), args.repeats)
            rows.append({"model": model, "config": "llama.cpp", "result": result})
    print(f"machine: {common.cpu_summary()}; {args.threads} threads; medians of {args.repeats} fresh processes")
    print(
        "criterion: peak RSS <= file + KV cache + 300 MiB; launch to first token <= 2 s + 1 s per GiB of file. "
        "Med-vLLM's KV pool is what it allocated (a CPU pool is mapped in as it is written)\n"
    )
    print(render(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
