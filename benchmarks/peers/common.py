"""What every system's benchmark shares: the cache folder, the workload spec, medians, peak memory."""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if BENCH_DIR not in sys.path:  # lets a system module reuse benchmarks/workload.py and throughput.py
    sys.path.insert(0, BENCH_DIR)


def cache_dir() -> str:
    """Peers' builds, virtual environments and converted weights: outside the repo, made on demand."""
    return os.environ.get("MEDVLLM_BENCH_CACHE", os.path.expanduser("~/.cache/medvllm-bench"))


def workload(tokenizer, spec: dict) -> dict:
    """The prompts every system gets, as token ids: one batch per request count, one single stream."""
    from workload import prompt_token_ids

    return {
        "batched": {n: prompt_token_ids(tokenizer, n) for n in sizes(spec)},
        "single": prompt_token_ids(tokenizer, 1, spec["single_prompt_len"], spec["single_prompt_len"], seed=1)[0],
    }


def sizes(spec: dict) -> list[int]:
    """Every parallel-request count measured: the table's and the plot's."""
    return sorted(set(spec["counts"]) | set(spec.get("levels") or []))


def medians(runs: list[dict]) -> dict:
    """Per-key medians over repeated runs of the same measurements (nested dicts of numbers)."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs if r.get(key) is not None]
        if not values:
            out[key] = None
        elif isinstance(values[0], dict):
            out[key] = medians(values)
        else:
            out[key] = statistics.median(values)
    return out


def own_peak_rss_bytes() -> int:
    """Largest resident set of this process or any child it has waited for (Linux reports KiB)."""
    self_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kib, children_kib) * 1024


def cpu_summary() -> str:
    """CPU model, cores and the matmul-relevant ISA extensions, from /proc/cpuinfo (Linux)."""
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
    except OSError:
        return f"{os.cpu_count()} CPUs"
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    wanted = ["avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"]
    have = [f for f in wanted if f in flags] or ["no AVX2"]
    return f"{model}, {os.cpu_count()} CPUs, {'/'.join(have)}"


def first_token_s(args: list[str], threads: int) -> float:
    """Seconds from launching first_token.py (a fresh Python process) to its first generated token."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "first_token.py")
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, script, *args, "--threads", str(threads)], stdout=subprocess.PIPE, text=True, env=env
    )
    with proc:
        for line in proc.stdout:
            if line.strip() == "FIRST_TOKEN":
                return time.perf_counter() - t0
    raise RuntimeError(f"first_token.py {' '.join(args)} exited {proc.returncode} before its first token")
