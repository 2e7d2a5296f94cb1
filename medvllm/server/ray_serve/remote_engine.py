"""The ingress's engine: AsyncLLMEngine's methods (add, alive, stats, stop) over the engine replicas,
so the single server's routes, parsing, limits, audit and answers run unchanged in front of them.

Each `add` is one streaming call through a DeploymentHandle; Ray's router picks the replica (the one
holding the prompt's prefix, routing.py). A call whose replica dies before it accepted the requests is
sent again (nothing had started); one that dies later ends with EngineDeadError, which the routes answer
with 503 `engine_unavailable` (a streamed answer: the 503 error event).
"""

from __future__ import annotations

import contextvars
import logging
import time

from ray.exceptions import RayError
from ray.serve.exceptions import RayServeException

from medvllm.engine.async_engine import EngineDeadError, RequestStream
from medvllm.errors import RequestError, StepError
from medvllm.outputs import RequestOutput
from medvllm.sampling_params import SamplingParams
from medvllm.server.ray_serve import wire

log = logging.getLogger("medvllm.server")

TRIES = 3  # a call refused by a dead replica before it started goes to another, this many times in all
RECENT_S = 60.0  # a replica's gauges count this long after its last answer
GAUGES = ("num_running", "num_waiting", "kv_cache_usage")
REPLICA_FAILED = "the replica serving this request failed: retry (other replicas take new requests)"

# the replica that answers the current HTTP request, for the x-medvllm-replica header (ingress.py)
answered_by: contextvars.ContextVar[dict | None] = contextvars.ContextVar("answered_by", default=None)


class RemoteStream(RequestStream):
    """A RequestStream whose outputs come from a replica: (index in the group, RequestOutput)."""

    def __init__(self, owner: RemoteEngine, ids: list[str], replica: str, items):
        super().__init__(owner, ids, outputs=None)
        self.replica, self._items = replica, items

    async def __anext__(self) -> tuple[int, RequestOutput]:
        if not self._unfinished:
            raise StopAsyncIteration
        try:
            item = await self._items.__anext__()
        except StopAsyncIteration:
            self._unfinished.clear()
            raise EngineDeadError(REPLICA_FAILED) from None
        except (RayError, RayServeException) as e:
            self._unfinished.clear()
            log.warning("replica %s failed mid-request: %s", self.replica, type(e).__name__)
            raise EngineDeadError(REPLICA_FAILED) from None
        if item[0] != wire.OUTPUT:
            self._unfinished.clear()
            raise (StepError if item[0] == wire.STEP_FAILED else EngineDeadError)(item[1])
        _, index, out, stats = item
        self._owner.seen(self.replica, stats)
        if out.finished:
            self._unfinished.discard(index)
        return index, out

    def abort(self) -> None:
        """Cancels the replica's call (it aborts what is unfinished there)."""
        if self._unfinished:
            self._unfinished.clear()
            self._items.cancel()


class RemoteEngine:
    remote = True  # ServerState.load: already warm and running

    def __init__(self, handle, source, info: dict, most_replicas: int):
        self._handle = handle.options(stream=True)
        self.source, self.tokenizer = source, source.tokenizer
        self.max_model_len = info["max_model_len"]
        # the ingress admits up to every replica's batch (+ --max-queue): one replica's times the most replicas
        self.max_num_seqs = info["max_num_seqs"] * most_replicas
        self.engine = None  # nothing local to release at shutdown
        self.error: BaseException | None = None
        self._most = most_replicas
        self._stats: dict[str, tuple[float, dict]] = {}  # replica -> (when, its last stats)

    def describe(self) -> str:
        return f"ray_serve_replicas<={self._most}"

    @property
    def alive(self) -> bool:
        return True  # Ray keeps the replicas; a call that finds none ends with EngineDeadError

    def stop(self, timeout: float = 30.0) -> None:
        pass  # the replicas belong to Ray Serve; cancelled calls abort their requests there

    def seen(self, replica: str, stats: dict) -> None:
        self._stats[replica] = (time.monotonic(), stats)

    def stats(self) -> dict:
        """Over the replicas, as of each one's last answer: counters summed over every replica seen, the
        gauges (running, waiting, KV usage: the mean) over those heard from in the last minute."""
        now = time.monotonic()
        every = [s for _, s in self._stats.values()]
        recent = [s for when, s in self._stats.values() if now - when < RECENT_S]
        total = {k: sum(s[k] for s in every) for k in _IDLE}
        for k in GAUGES:
            total[k] = sum(s[k] for s in recent)
        total["kv_cache_usage"] = total["kv_cache_usage"] / len(recent) if recent else 0.0
        return total

    async def add(
        self,
        requests: list[tuple[list[int], SamplingParams]],
        *,
        stream: bool = False,
        request_id: str | None = None,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> RemoteStream:
        """Starts the group on a replica; returns once its engine accepted all of it (RequestError if not)."""
        base = request_id or f"req-{time.monotonic_ns()}"
        ids = [base] if len(requests) == 1 else [f"{base}-{i}" for i in range(len(requests))]
        call = wire.EngineCall(requests, stream, base, arrival_time or time.time(), priority)
        for attempt in range(TRIES):
            items = self._handle.generate.remote(call)
            try:
                first = await items.__anext__()
            except (RayError, RayServeException, StopAsyncIteration) as e:
                log.warning("request %s: a replica failed before starting it (%s)", base, type(e).__name__)
                if attempt + 1 == TRIES:
                    raise EngineDeadError(REPLICA_FAILED) from None
                continue
            except BaseException:  # cancelled (the client left): the replica aborts what it added
                items.cancel()
                raise
            break
        if first[0] == wire.REFUSED:
            raise RequestError(first[1])
        if first[0] != wire.ACCEPTED:
            raise EngineDeadError(first[1])
        _, replica, stats = first
        self.seen(replica, stats)
        holder = answered_by.get()
        if holder is not None:
            holder["replica"] = replica
        return RemoteStream(self, ids, replica, items)


_IDLE = {
    "num_running": 0,
    "num_waiting": 0,
    "kv_cache_usage": 0.0,
    "num_kv_blocks": 0,
    "kv_blocks_used_ever": 0,
    "prefix_cache_hit_tokens": 0,
    "prefix_cache_query_tokens": 0,
    "prefill_tokens_computed": 0,
    "generated_tokens": 0,
    "num_preemptions": 0,
}
