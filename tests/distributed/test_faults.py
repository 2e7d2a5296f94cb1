"""Faults and shutdown over 2 gloo ranks: a dead worker is an error within seconds, never a hang, and no
process or shared-memory segment outlives the engine (normal shutdown, failure, or Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

from medvllm import LLM, SamplingParams
from medvllm.distributed import DistributedError
from tests.tiny_models import build_tiny

ENGINE = dict(kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu", tensor_parallel_size=2)
LONG = SamplingParams(temperature=0, max_tokens=150, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    build_tiny("llama", path)
    return str(path)


def children() -> set[int]:
    """Live (or unreaped) child processes of this test process, read from /proc."""
    me, kids = str(os.getpid()), set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[1] == me:
                    kids.add(int(pid))
        except OSError:
            pass
    return kids


def cmdline(pid: int) -> str:
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode()


def shared_memory() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def test_killed_worker_raises_within_seconds_and_leaves_no_process(folder):
    kids, shm = children(), shared_memory()
    llm = LLM(folder, **ENGINE)
    engine = llm.engine
    [worker] = [pid for pid in children() - kids if "spawn_main" in cmdline(pid)]
    for _ in range(4):
        engine.add_request(list(range(3, 60)), LONG)
    engine.step()
    killed_at = []

    def kill():
        os.kill(worker, signal.SIGKILL)
        killed_at.append(time.monotonic())

    threading.Timer(0.2, kill).start()  # lands inside some step: in a collective, or between two
    with pytest.raises(DistributedError) as err:
        while engine.has_unfinished_requests():
            engine.step()
    elapsed = time.monotonic() - killed_at[0]
    assert elapsed < 10, f"the driver took {elapsed:.1f}s to notice"
    assert f"rank 1 (pid {worker}) was killed by SIGKILL" in str(err.value)
    assert children() == kids  # the killed worker is reaped, nothing else was left running
    assert shared_memory() - shm == set()
    with pytest.raises(DistributedError, match="was killed by SIGKILL"):  # the engine stays failed, clearly
        engine.step()


def test_shutdown_leaves_no_process_or_shared_memory(folder):
    kids, shm = children(), shared_memory()
    llm = LLM(folder, **ENGINE)
    assert len([pid for pid in children() - kids if "spawn_main" in cmdline(pid)]) == 1  # rank 1
    out = llm.generate([[5, 6, 7, 8]], SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
    assert len(out[0].outputs[0].token_ids) == 4
    started = time.monotonic()
    llm.engine.shutdown()
    assert time.monotonic() - started < 10
    assert children() == kids and shared_memory() - shm == set()
    with pytest.raises(DistributedError, match="shut down"):
        llm.generate([[5, 6]], SamplingParams(max_tokens=1))
    llm.engine.shutdown()  # twice is harmless


SCRIPT = """
import sys
from medvllm import LLM, SamplingParams
llm = LLM(sys.argv[1], kvcache_block_size=16, num_kvcache_blocks=64, max_model_len=256, device="cpu",
          tensor_parallel_size=2)
print("ready", flush=True)
while True:
    llm.generate([list(range(3, 60))] * 4, SamplingParams(temperature=0, max_tokens=150, ignore_eos=True))
"""


def tagged(tag: str) -> list[int]:
    """Processes whose environment carries `tag`: the script and everything it started."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                if tag.encode() in f.read():
                    with open(f"/proc/{pid}/stat") as s:
                        if s.read().rsplit(")", 1)[1].split()[0] != "Z":
                            found.append(int(pid))
        except OSError:
            pass
    return found


def test_ctrl_c_mid_generation_stops_every_rank(folder):
    tag = f"MEDVLLM_TEST_TAG={uuid.uuid4().hex}"
    env = dict(os.environ, MEDVLLM_TEST_TAG=tag.split("=", 1)[1])
    shm = shared_memory()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, folder],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        assert len(tagged(tag)) >= 2  # the driver and its worker
        time.sleep(0.5)  # mid-generation
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
        proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "KeyboardInterrupt" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tagged(tag) == []
    assert shared_memory() - shm == set()
