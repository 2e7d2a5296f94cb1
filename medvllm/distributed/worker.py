"""Worker ranks 1..N-1: load this rank's shard, then run the model step each time rank 0 sends one.

A worker never samples: its LM head sends its slice of the logits to rank 0. It stops when rank 0
says so, or exits when rank 0 goes away (a collective fails, or, when spawned, its parent is gone).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from medvllm.distributed import channel
from medvllm.distributed.group import JOIN_TIMEOUT, agree_to_stop, join, leave
from medvllm.distributed.parallel import TensorParallel


@dataclass(frozen=True)
class SpawnArgs:
    rank: int
    world_size: int
    backend: str
    host: str
    port: int  # rank 0's TCPStore
    device_index: int | None  # CUDA device of this rank; None on CPU
    threads: int | None  # torch intra-op threads (CPU)


def spawned_main(args: SpawnArgs) -> None:
    """Entry point of a worker process the engine started (torch multiprocessing, spawn)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is rank 0's to handle; it then stops us
    _exit_with_parent()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device_index is not None:
        torch.cuda.set_device(args.device_index)
    try:
        store = dist.TCPStore(args.host, args.port, args.world_size, is_master=False, timeout=JOIN_TIMEOUT)
        store.set(f"joined/{args.rank}", "1")
        tp = join(args.backend, args.rank, args.world_size, store)
    except Exception as e:  # noqa: BLE001  (rank 0 sees the exit code and reports it)
        _die(args.rank, "could not join rank 0", e)
    serve_until_stopped(tp)


def serve_until_stopped(tp: TensorParallel) -> None:
    """Receive the model to load, then serve steps until told to stop. Spawned and torchrun ranks."""
    try:
        _, config, model, max_model_len = channel.receive(tp)
        runner = _load(config, model, max_model_len, tp)
        serve(runner, tp)
        agree_to_stop(tp)
    except Exception as e:  # noqa: BLE001
        lost = isinstance(e, RuntimeError) and "connection" in str(e).lower()
        _die(tp.rank, "lost contact with rank 0, exiting" if lost else "failed", e)
    leave()


def _load(config, model, max_model_len, tp):
    from medvllm.engine.model_runner import ModelRunner
    from medvllm.loader import open_model

    return ModelRunner(config, open_model(model), max_model_len, tp=tp)


@torch.inference_mode()
def serve(runner, tp: TensorParallel) -> None:
    while True:
        message = channel.receive(tp)
        if message[0] == "stop":
            return
        step = channel.to_device(message[1], runner.device)
        hidden = runner.model(step.input_ids, step.positions, step.attn)
        if step.sampling:  # as ModelRunner.run: no logits when only inner prompt chunks ran
            runner.model.compute_logits(hidden[step.logits_index])  # its slice goes to rank 0


def _die(rank: int, what: str, error: BaseException) -> None:
    print(f"medvllm: tensor-parallel rank {rank} {what}: {' '.join(str(error).split())}", file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)  # skip teardown: the group may be half-broken, and exiting is what rank 0 watches for


def _exit_with_parent() -> None:
    """A spawned worker never outlives the engine that started it, however that engine ended."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="medvllm-parent-watch", daemon=True).start()
