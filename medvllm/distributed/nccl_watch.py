"""On CUDA, rank 0 watches the workers it spawned, because NCCL does not notice a dead peer by itself.

gloo's sockets fail the moment a peer's process goes away. NCCL keeps waiting in the collective until
its timeout (minutes), and the GPU work queued behind it never finishes. So a thread polls the worker
processes; when one dies during a step it records the failure and aborts the NCCL communicators,
which ends the pending collectives at once. The step then raises (or returns, and its guard raises
the recorded failure).
"""

from __future__ import annotations

import threading
import time

POLL_S = 0.25


def watch(workers, describe) -> threading.Thread:
    """Start the watch over `workers` (a launcher.Workers); `describe(dead, when)` words the failure."""

    def run():
        while True:
            time.sleep(POLL_S)
            with workers.lock:
                if workers.stopping:
                    return
                dead = [p for p in workers.procs if p.exitcode is not None]
                if not dead:
                    continue
                if workers.in_step:  # between steps, the next step's own check reports it
                    workers.failure = describe(dead, workers.phase)
                    _abort_nccl()
                return

    thread = threading.Thread(target=run, name="medvllm-tp-watch", daemon=True)
    thread.start()
    return thread


def _abort_nccl() -> None:
    try:
        from torch.distributed.distributed_c10d import _abort_process_group

        _abort_process_group()
    except Exception:  # noqa: BLE001  (an older torch without it: the collective's own timeout still ends it)
        pass
