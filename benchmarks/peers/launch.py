"""Runs one system of a comparison in a fresh process, and samples the RSS of its whole process tree.

compare_cpu.py calls these once per system and model file, so each system's peak memory is its own.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import threading

import common

HERE = os.path.dirname(os.path.abspath(__file__))


def run_system(system: str, extra: list[str], work_path: str, out_path: str, args) -> dict:
    """One fresh process for the system; peak RSS is the larger of its own report and the sampled
    sum over its process tree (vLLM may run several processes at once)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    cmd = [sys.executable, os.path.join(HERE, "run_system.py"), system, work_path, out_path, *extra]
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
