"""Rank 0's side of the worker ranks: start them (or join torchrun's), message them, notice when one
dies, and stop them so that no process outlives the engine."""

from __future__ import annotations

import os
import signal
import threading
import time
from contextlib import contextmanager
from multiprocessing import resource_tracker

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from medvllm.config import Config
from medvllm.distributed import DistributedError, channel, nccl_watch
from medvllm.distributed.group import (
    JOIN_TIMEOUT,
    agree_to_stop,
    backend_for,
    join,
    leave,
    refuse_second_group,
    torchrun_env,
)
from medvllm.distributed.parallel import TensorParallel
from medvllm.distributed.worker import SpawnArgs, serve_until_stopped, spawned_main
from medvllm.errors import MedVLLMError

GRACE_S = 5.0  # how long a stopped worker gets to exit before it is terminated


class Workers:
    def __init__(self, config: Config):
        self.size = config.tensor_parallel_size
        self.device = config.resolved_device
        self.backend = backend_for(self.device)
        self.torchrun = torchrun_env()
        self.procs: list = []
        self.store = None
        self.tp: TensorParallel | None = None
        self.closed = False
        self.in_step = False  # a step was sent and not finished: workers may be inside a collective
        self.phase = ""  # what the ranks are doing together, for error messages ("during a model step")
        self.failure: str | None = None  # why the group broke, repeated to every later call
        self.lock = threading.Lock()  # shutdown vs the NCCL watch thread
        self.stopping = False
        self._threads = None
        self._started_tracker = False

    # ---- start
    def start(self) -> TensorParallel:
        """Join or create the group; returns rank 0's TensorParallel.

        Under torchrun, a rank other than 0 serves as a worker here and then ends the process.
        """
        refuse_second_group()
        if self.torchrun is not None:
            return self._join_torchrun()
        try:
            return self._spawn()
        except BaseException:
            self.shutdown(force=True)
            raise

    def _spawn(self) -> TensorParallel:
        self._share_cpu()
        self.store = dist.TCPStore(
            "127.0.0.1", 0, self.size, is_master=True, wait_for_workers=False, timeout=JOIN_TIMEOUT
        )
        ctx = mp.get_context("spawn")
        # spawning starts Python's resource-tracker helper process if none runs; then we stop it too
        self._started_tracker = getattr(resource_tracker._resource_tracker, "_fd", 0) is None
        for rank in range(1, self.size):
            args = SpawnArgs(
                rank,
                self.size,
                self.backend,
                "127.0.0.1",
                self.store.port,
                rank if self.device.type == "cuda" else None,
                self._threads,
            )
            proc = ctx.Process(target=spawned_main, args=(args,), name=f"medvllm-tp-rank{rank}", daemon=True)
            proc.start()
            self.procs.append(proc)
        self._wait_joined()
        self.tp = join(self.backend, 0, self.size, self.store)
        if self.backend == "nccl" and self.procs:
            nccl_watch.watch(self, _dead_message)
        return self.tp

    def _join_torchrun(self) -> TensorParallel:
        env = self.torchrun
        if env.world_size != self.size:
            from medvllm.errors import ConfigError

            raise ConfigError(
                f"tensor_parallel_size={self.size} but torchrun started WORLD_SIZE={env.world_size} "
                f"processes: launch {self.size} processes in all (--nnodes x --nproc-per-node)"
            )
        if self.device.type == "cuda":
            torch.cuda.set_device(env.local_rank)
        self.tp = join(self.backend, env.rank, env.world_size)
        if env.rank != 0:
            serve_until_stopped(self.tp)
            raise SystemExit(0)
        return self.tp

    def _share_cpu(self) -> None:
        """On CPU, the ranks split this process's cores instead of each claiming all of them."""
        if self.device.type != "cpu":
            return
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        self._threads = max(1, cores // self.size)
        self._saved_threads = torch.get_num_threads()
        torch.set_num_threads(self._threads)

    def _wait_joined(self) -> None:
        keys = [f"joined/{rank}" for rank in range(1, self.size)]
        deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds()
        while not self.store.check(keys):
            self.check("while starting")
            if time.monotonic() > deadline:
                self.shutdown(force=True)
                raise DistributedError(
                    f"tensor-parallel workers did not start within {JOIN_TIMEOUT}: "
                    "check that the machine is not out of memory or processes"
                )
            time.sleep(0.05)

    # ---- talk and watch
    def send(self, message: tuple) -> None:
        channel.send(self.tp, message)

    def check(self, when: str) -> None:
        """Raise DistributedError (after stopping the rest) if a spawned worker has exited."""
        dead = [p for p in self.procs if p.exitcode is not None]
        if dead:
            self.failure = _dead_message(dead, when)
            self.shutdown(force=True)
            raise DistributedError(self.failure)

    @contextmanager
    def guard(self, when: str):
        """Turns a failed collective into a DistributedError naming the worker that died."""
        if self.closed:
            raise DistributedError(
                self.failure
                or "the tensor-parallel engine was shut down (engine.shutdown()): create a new engine to continue"
            )
        self.check(when)
        self.in_step, self.phase = True, when
        try:
            yield
        except BaseException as e:
            # whatever went wrong, the ranks may now be at different collectives: the group is unusable
            failed_call = isinstance(e, RuntimeError) and not isinstance(e, MedVLLMError)
            dead = self._wait_for_dead(2.0) if failed_call else []
            self.shutdown(force=True)
            if not (dead or (failed_call and _is_connection_error(e))):
                raise
            self.failure = (
                _dead_message(dead, when)
                if dead
                else (
                    f"lost contact with a tensor-parallel rank {when} ({' '.join(str(e).split())[:200]}): "
                    "the engine cannot continue; check the other ranks' logs and restart it"
                )
            )
            raise DistributedError(self.failure) from e
        if self.failure is not None:  # the NCCL watch aborted this step: its results are not to be trusted
            self.shutdown(force=True)
            raise DistributedError(self.failure)
        self.in_step = False

    def _wait_for_dead(self, seconds: float) -> list:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.exitcode is not None]
            if dead or not self.procs:
                return dead
            time.sleep(0.05)
        return []

    # ---- stop
    def shutdown(self, force: bool = False) -> None:
        """Stop every worker and leave the group. Safe to call twice, from finalizers, and after a failure."""
        if self.closed:
            return
        self.closed = True
        with self.lock:
            self.stopping = True
        if self.tp is not None and not force and not self.in_step:
            try:
                self.send(("stop",))
                agree_to_stop(self.tp)
            except RuntimeError:
                force = True
        for proc in self.procs:
            proc.join(timeout=0 if force or self.in_step else GRACE_S)
            if proc.exitcode is None:
                proc.kill()
                proc.join(timeout=GRACE_S)
        self.procs = []
        leave()
        self.store = None
        if self._started_tracker and hasattr(resource_tracker._resource_tracker, "_stop"):
            resource_tracker._resource_tracker._stop()
        if self._threads is not None:
            torch.set_num_threads(self._saved_threads)
            self._threads = None


def _dead_message(dead: list, when: str) -> str:
    p = dead[0]
    rank = p.name.rsplit("rank", 1)[-1]
    code = p.exitcode
    if code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
        hint = "; SIGKILL often means the system ran out of memory" if -code == signal.SIGKILL else ""
    else:
        how, hint = f"exited with code {code}", "; its error is printed above"
    return (
        f"tensor-parallel worker rank {rank} (pid {p.pid}) {how} {when}{hint}: the engine cannot continue; restart it"
    )


def _is_connection_error(e: RuntimeError) -> bool:
    text = str(e).lower()
    return isinstance(e, dist.DistError) or any(
        s in text for s in ("connection closed", "connection reset", "broken pipe", "gloo", "nccl")
    )
