"""An engine replica: one LLMEngine (any deployment profile; tensor parallel inside it allowed) on its
own thread, as AsyncLLMEngine runs it for the single server, answering the ingress's calls.

Ray Serve runs `check_health` every few seconds; once the engine thread has failed or stopped it raises,
and Ray replaces the replica. The ingress sees requests in flight on a dead replica end with an error
(503 to the client), and routes new ones to the replicas left.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from ray import serve

from medvllm.config import Config
from medvllm.engine.async_engine import AsyncLLMEngine, EngineDeadError
from medvllm.engine.llm_engine import LLMEngine
from medvllm.errors import RequestError, StepError
from medvllm.server.app import release, warm_up
from medvllm.server.ray_serve import wire

log = logging.getLogger("medvllm.server")


class EngineReplica:
    def __init__(self, config: Config, profile: str | None, settings_sha256: str | None):
        self.replica_id = serve.get_replica_context().replica_id.unique_id
        engine = LLMEngine(config)
        warm_up(engine)
        self.engine = AsyncLLMEngine(engine).start()
        self._info = {
            "replica": self.replica_id,
            "max_model_len": engine.max_model_len,
            "max_num_seqs": config.max_num_seqs,
            "kv_blocks": engine.runner.num_blocks,
            "deployment_profile": profile,
            "settings_sha256": settings_sha256,
        }
        log.info("replica %s ready: max_model_len=%d", self.replica_id, engine.max_model_len)

    def info(self) -> dict:
        return self._info

    def check_health(self) -> None:
        if not self.engine.alive:
            raise RuntimeError(f"replica {self.replica_id}: the engine thread is not running ({self.engine.error!r})")

    async def generate(self, call: wire.EngineCall) -> AsyncIterator[tuple]:
        """Runs one group of requests; see wire.py for the items. Cancelling the stream (the client
        left) aborts what is unfinished and frees its KV blocks."""
        try:
            stream = await self.engine.add(
                call.requests,
                stream=call.stream,
                request_id=call.request_id,
                arrival_time=call.arrival_time,
                priority=call.priority,
            )
        except RequestError as e:
            yield (wire.REFUSED, str(e))
            return
        except EngineDeadError as e:
            yield (wire.DEAD, str(e))
            return
        yield (wire.ACCEPTED, self.replica_id, self.engine.stats())
        async with stream:
            try:
                async for index, out in stream:
                    yield (wire.OUTPUT, index, out, self.engine.stats())
            except StepError as e:
                yield (wire.STEP_FAILED, str(e))
            except EngineDeadError as e:
                yield (wire.DEAD, str(e))

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.stop()
            release(engine.engine)
