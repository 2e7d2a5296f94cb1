"""AsyncLLMEngine: an asyncio front to LLMEngine, so concurrent requests share one continuous batch.

LLMEngine is not thread-safe, so one background thread owns it: it takes add/abort commands from a
queue, runs `engine.step()` while anything is unfinished, and hands each output to the event loop of
the request that asked for it. The event loop never touches the engine.

    async with await engine.add([(prompt_ids, params)]) as stream:   # RequestError if refused
        async for index, output in stream:
            ...
    # leaving the block early (client gone, task cancelled) aborts what is unfinished and frees its KV
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from medvllm.engine.llm_engine import LLMEngine
from medvllm.outputs import RequestOutput
from medvllm.sampling_params import SamplingParams

log = logging.getLogger("medvllm.engine")


class EngineDeadError(RuntimeError):
    """The engine thread failed or was stopped; no request can run until the server restarts."""


_ACCEPTED = object()  # first item of every stream: the engine took all of the group's requests


@dataclass
class _Add:
    ids: list[str]
    requests: list[tuple[list[int], SamplingParams]]
    stream: bool
    arrival_time: float
    deliver: Callable[[object], None]
    priority: int = 0


@dataclass
class _Abort:
    ids: list[str]


@dataclass
class _Stop:
    done: threading.Event = field(default_factory=threading.Event)


class RequestStream:
    """The outputs of one group of requests (a prompt list times n), as (index in the group, output)."""

    def __init__(self, owner: AsyncLLMEngine, ids: list[str], outputs: asyncio.Queue):
        self.ids = ids
        self._owner = owner
        self._outputs = outputs
        self._unfinished = set(range(len(ids)))

    @property
    def finished(self) -> bool:
        return not self._unfinished

    def __aiter__(self):
        return self

    async def __anext__(self) -> tuple[int, RequestOutput]:
        if not self._unfinished:
            raise StopAsyncIteration
        item = await self._outputs.get()
        if isinstance(item, BaseException):
            self.abort()  # the rest of the group has no one to read it
            raise item
        index, out = item
        if out.finished:
            self._unfinished.discard(index)
        return index, out

    def abort(self) -> None:
        if self._unfinished:
            self._owner._submit(_Abort([self.ids[i] for i in sorted(self._unfinished)]))
            self._unfinished.clear()

    async def __aenter__(self) -> RequestStream:
        return self

    async def __aexit__(self, *exc) -> None:
        self.abort()


class AsyncLLMEngine:
    def __init__(self, engine: LLMEngine):
        self.engine = engine
        self.max_model_len = engine.max_model_len
        self.max_num_seqs = engine.config.max_num_seqs
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._stats = engine.stats()  # replaced (never mutated) by the engine thread after each step
        self.error: BaseException | None = None
        # set (under the lock) when the engine thread ends: a command put before is failed by the thread as
        # it leaves, one submitted after is failed by _submit, so no request waits on a thread that is gone
        self._closed = False
        self._lock = threading.Lock()

    # ---- lifecycle
    def start(self) -> AsyncLLMEngine:
        self._thread = threading.Thread(target=self._run, name="medvllm-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Aborts every request still in the engine and ends the engine thread."""
        if self._thread is None or not self._thread.is_alive():
            return
        stop = _Stop()
        with self._lock:
            if self._closed:
                return
            self._commands.put(stop)
        stop.done.wait(timeout)
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None and not self._closed

    def stats(self) -> dict:
        """The engine's stats() as of its last step (running, waiting, kv_cache_usage, ...)."""
        return self._stats

    # ---- requests (event-loop side)
    async def add(
        self,
        requests: list[tuple[list[int], SamplingParams]],
        *,
        stream: bool = False,
        request_id: str | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> RequestStream:
        """Hands a group of requests to the engine; returns once it accepted all of them.

        Raises the engine's RequestError (too long, ...) when it refuses one; then none of them runs.
        `stream=True` detokenizes every step so each output carries its new text in delta_text.
        `priority`: the group's priority under scheduling_policy='priority' (lower is more urgent).
        """
        if not self.alive:
            raise EngineDeadError("the engine is not running: see the server log for why")
        loop = asyncio.get_running_loop()
        outputs: asyncio.Queue = asyncio.Queue()
        base = request_id or f"req-{next(self._ids)}"
        ids = [base] if len(requests) == 1 else [f"{base}-{i}" for i in range(len(requests))]

        def deliver(item) -> None:  # runs on the engine thread
            try:
                loop.call_soon_threadsafe(outputs.put_nowait, item)
            except RuntimeError:  # that loop is closed: nobody is waiting for this output any more
                pass

        self._submit(_Add(ids, requests, stream, arrival_time or time.time(), deliver, priority))
        try:
            first = await outputs.get()
        except asyncio.CancelledError:  # the caller left before the engine answered: undo the add
            self._submit(_Abort(ids))
            raise
        if isinstance(first, BaseException):
            raise first
        assert first is _ACCEPTED
        return RequestStream(self, ids, outputs)

    def _submit(self, command) -> None:
        with self._lock:
            if not self._closed:
                self._commands.put(command)
                return
        # the engine thread has ended (between the caller's liveness check and now): nobody reads the queue
        if isinstance(command, _Add):
            command.deliver(EngineDeadError("the engine is not running: see the server log for why"))

    # ---- the engine thread
    def _run(self) -> None:
        try:
            self._loop()
        finally:
            with self._lock:
                self._closed = True
            self._fail_pending(EngineDeadError("the engine is not running: see the server log for why"))

    def _loop(self) -> None:
        sinks: dict[str, tuple[int, Callable]] = {}  # request id -> (index in its group, deliver)
        try:
            while True:
                busy = self.engine.has_unfinished_requests()
                command = self._next_command(block=not busy)
                while command is not None:
                    if isinstance(command, _Stop):
                        self._abort_all(sinks)
                        command.done.set()
                        return
                    self._apply(command, sinks)
                    command = self._next_command(block=False)
                if self.engine.has_unfinished_requests():
                    for out in self.engine.step():
                        sink = sinks.pop(out.request_id, None) if out.finished else sinks.get(out.request_id)
                        if sink is not None:
                            index, deliver = sink
                            # a step that raised ended this request alone: its caller gets the StepError
                            deliver((index, out) if out.error is None else out.error)
                self._stats = self.engine.stats()
        except BaseException as e:  # noqa: BLE001 - reported to every waiting request, then the thread ends
            log.exception("engine thread failed")
            self.error = e
            dead = EngineDeadError(f"the engine failed ({type(e).__name__}): see the server log")
            for _, deliver in sinks.values():
                deliver(dead)
            self._fail_pending(dead)

    def _next_command(self, block: bool):
        try:
            return self._commands.get(block=block)
        except queue.Empty:
            return None

    def _apply(self, command, sinks: dict) -> None:
        if isinstance(command, _Abort):
            for request_id in command.ids:
                if sinks.pop(request_id, None) is not None:
                    self.engine.abort_request(request_id)
            return
        added: list[str] = []
        try:
            for request_id, (prompt, params) in zip(command.ids, command.requests):
                self.engine.add_request(
                    prompt,
                    params,
                    request_id=request_id,
                    stream=command.stream,
                    arrival_time=command.arrival_time,
                    priority=command.priority,
                )
                added.append(request_id)
        except Exception as e:  # noqa: BLE001 - the request's own error (RequestError), sent back to it
            for request_id in added:
                self.engine.abort_request(request_id)
            command.deliver(e)
            return
        for index, request_id in enumerate(command.ids):
            sinks[request_id] = (index, command.deliver)
        command.deliver(_ACCEPTED)

    def _abort_all(self, sinks: dict) -> None:
        for request_id, (_, deliver) in list(sinks.items()):
            self.engine.abort_request(request_id)
            deliver(EngineDeadError("the server is shutting down: the request was aborted"))
        sinks.clear()
        self._fail_pending(EngineDeadError("the server is shutting down"))
        self._stats = self.engine.stats()

    def _fail_pending(self, error: BaseException) -> None:
        while (command := self._next_command(block=False)) is not None:
            if isinstance(command, _Add):
                command.deliver(error)
            elif isinstance(command, _Stop):
                command.done.set()
