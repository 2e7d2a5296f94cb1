"""llama.cpp on the same GGUF file: llama-bench (one stream) and llama-batched-bench (many).

Built by benchmarks/peers/llama_cpp.sh. Every measurement runs with flash attention on and off and
keeps the better. llama-batched-bench gives every sequence the same prompt length, so it gets the
workload's mean prompt length; output tok/s counts generated tokens over the whole time, prefill included.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import tempfile
import time

from common import cache_dir, sizes

FLASH_ATTENTION = ("on", "off")
STARTUP_CTX = 512  # the start-up run's context: its KV cache stays small beside the weights


def bin_dir() -> str | None:
    """The newest build's bin folder holding both tools, or None when not built."""
    for root in sorted(glob.glob(os.path.join(cache_dir(), "llama-cpp-python-*")), reverse=True):
        path = os.path.join(root, "build", "bin")
        if all(os.access(os.path.join(path, t), os.X_OK) for t in ("llama-bench", "llama-batched-bench")):
            return path
    return None


def parse_llama_bench(jsonl: str) -> dict:
    """llama-bench `-o jsonl` lines -> {"pp": tok/s of the prompt test, "tg": tok/s of the generation test}."""
    out = {}
    for line in jsonl.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        row = json.loads(line)
        key = "tg" if row["n_gen"] > 0 and row["n_prompt"] == 0 else "pp" if row["n_gen"] == 0 else "pg"
        out[key] = row["avg_ts"]
    return out


def parse_batched_bench(jsonl: str) -> dict[int, float]:
    """llama-batched-bench `--output-format jsonl` -> {parallel sequences: generated tok/s incl. prefill}."""
    out = {}
    for line in jsonl.splitlines():
        line = line.strip()
        if line.startswith("{") and '"pl"' in line:
            row = json.loads(line)
            out[int(row["pl"])] = row["pl"] * row["tg"] / row["t"]
    return out


def _run(cmd: list[str]) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"{os.path.basename(cmd[0])} exited {done.returncode}: {' | '.join(tail)}")
    return done.stdout


def measure(model: str, spec: dict, prompt_len: int) -> dict:
    """One repeat: the best of flash attention on/off for each figure (reported per figure)."""
    tools = bin_dir()
    threads, tg = str(spec["threads"]), spec["max_tokens"]
    single, batched = {}, {}
    for fa in FLASH_ATTENTION:
        bench = parse_llama_bench(
            _run(
                [
                    os.path.join(tools, "llama-bench"),
                    "-m",
                    model,
                    "-t",
                    threads,
                    "-p",
                    str(spec["single_prompt_len"]),
                    "-n",
                    str(tg),
                    "-fa",
                    fa,
                    "-r",
                    "1",
                    "-o",
                    "jsonl",
                ]
            )
        )
        if bench.get("tg", 0) > single.get("tg", 0):
            single = bench
        counts = sizes(spec)
        ctx = max(counts) * (prompt_len + tg) + 256
        rows = parse_batched_bench(
            _run(
                [
                    os.path.join(tools, "llama-batched-bench"),
                    "-m",
                    model,
                    "-t",
                    threads,
                    "-c",
                    str(ctx),
                    "-b",
                    "2048",
                    "-ub",
                    "512",
                    "-fa",
                    fa,
                    "-npp",
                    str(prompt_len),
                    "-ntg",
                    str(tg),
                    "-npl",
                    ",".join(map(str, counts)),
                    "--output-format",
                    "jsonl",
                ]
            )
        )
        for n, tps in rows.items():
            batched[n] = max(batched.get(n, 0.0), tps)
    return {
        "batched": {str(n): batched.get(n) for n in sizes(spec)},
        "single_decode": single.get("tg"),
        # Prefill of the 30-token prompt at llama-bench's prompt speed: its time to first token.
        "ttft_s": spec["single_prompt_len"] / single["pp"] if single.get("pp") else None,
    }


def startup_s(model: str, threads: int) -> float:
    """A fresh process from launch to one generated token (batched-bench also warms up once first)."""
    return startup(model, threads)[0]


def startup(model: str, threads: int, ctx: int = STARTUP_CTX) -> tuple[float, int]:
    """(seconds from launch to exit after one generated token, peak RSS bytes of that process)."""
    cmd = [os.path.join(bin_dir(), "llama-batched-bench"), "-m", model, "-t", str(threads), "-c", str(ctx)]
    cmd += ["-npp", "8", "-ntg", "1", "-npl", "1", "--output-format", "jsonl"]
    with tempfile.TemporaryFile() as log:  # a file, not a pipe: its load log could fill a pipe while we wait
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS, nobody else's
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"llama-batched-bench exited {proc.returncode}: {' | '.join(tail)}")
    return seconds, usage.ru_maxrss * 1024  # Linux reports KiB
