"""One API request's run on the async engine: admission, outputs with metrics, disconnects, the log line."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from starlette.requests import Request
from starlette.responses import StreamingResponse

from medvllm.engine.async_engine import EngineDeadError, RequestStream
from medvllm.errors import RequestError, StepError
from medvllm.outputs import RequestOutput
from medvllm.sampling_params import SamplingParams
from medvllm.server.audit import audit_record
from medvllm.server.errors import bad_request, step_failed, unavailable
from medvllm.server.keys import ANONYMOUS
from medvllm.server.request_log import log_content, log_request


class ClientGone(Exception):
    """The client closed the connection before its answer was ready."""


class Run:
    """A group of engine requests (prompts x n) answering one API call."""

    def __init__(
        self, state, endpoint: str, request_id: str, prompts: list[list[int]], n: int, request: Request | None = None
    ):
        self.state, self.endpoint, self.request_id = state, endpoint, request_id
        # who asked (parse() put the key's identity on the request) and from where, for limits and the audit
        self.identity = getattr(getattr(request, "state", None), "identity", None) or ANONYMOUS
        self.client = request.client.host if request is not None and request.client else None
        self._request_state = getattr(request, "state", None)  # marked once this run's audit record is written
        self._charge = None
        self.prompts, self.n = prompts, n
        self.size = len(prompts) * n
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.arrival = time.time()
        self.created = int(self.arrival)
        self.stream: RequestStream | None = None
        self.finals: list[RequestOutput | None] = [None] * self.size
        self._seen = [0] * self.size  # tokens handed out so far, per sequence
        self._last = [0.0] * self.size
        self._ttft: float | None = None
        self._closed = False
        self._admitted = False

    async def start(self, params: list[SamplingParams], stream: bool, priority: int = 0) -> None:
        """Admits the group (503 when the queue is full) and hands it to the engine (400 if refused)."""
        state = self.state
        capacity = state.engine.max_num_seqs + state.settings.max_queue
        if state.inflight + self.size > capacity:  # idle or not: limits.check_sequences refused what never fits
            raise unavailable(
                f"the server is at capacity ({state.inflight} requests in flight, queue limit "
                f"{state.settings.max_queue}): retry after the Retry-After delay",
                code="queue_full",
            )
        self._charge = state.limits.admit(self.identity, self.prompt_tokens + self._most_new_tokens(params))
        state.inflight += self.size
        self._admitted = True
        requests = [(ids, params[j]) for ids in self.prompts for j in range(self.n)]
        try:
            self.stream = await state.engine.add(
                requests, stream=stream, request_id=self.request_id, arrival_time=self.arrival, priority=priority
            )
        except RequestError as e:
            self.close("refused", 400)
            raise bad_request(str(e), code="invalid_request") from None
        except EngineDeadError as e:
            self.close("engine_down", 503)
            raise unavailable(str(e), code="engine_unavailable") from None
        except BaseException:  # cancelled (the server is stopping): free the slots, log the line
            self.close("cancelled")
            raise
        state.metrics.prompt_tokens.inc(self.prompt_tokens)
        state.metrics.count(self.endpoint, 200)

    async def outputs(self) -> AsyncIterator[tuple[int, RequestOutput, list[int], list[dict] | None]]:
        """(index, output, its new token ids, their logprob entries or None), recording metrics as they come."""
        metrics = self.state.metrics
        async for index, out in self.stream:
            c = out.outputs[0]
            start, new = self._seen[index], list(c.delta_token_ids)
            entries = None if c.logprobs is None else c.logprobs[start : start + len(new)]
            self._seen[index] = start + len(new)
            now = time.monotonic()
            if new:
                metrics.generation_tokens.inc(len(new))
                if start == 0 and out.metrics.time_to_first_token is not None:
                    metrics.ttft.observe(out.metrics.time_to_first_token)
                    self._ttft = self._ttft if self._ttft is not None else out.metrics.time_to_first_token
                elif self._last[index]:
                    gap = (now - self._last[index]) / len(new)
                    for _ in new:
                        metrics.itl.observe(gap)
                self._last[index] = now
            if out.finished:
                self.finals[index] = out
                if out.metrics.finished_time is not None:
                    metrics.e2e.observe(out.metrics.finished_time - out.metrics.arrival_time)
            yield index, out, new, entries

    async def collect(self, request: Request) -> list[RequestOutput] | None:
        """Every final output, or None if the client left first (its requests are then aborted).
        Closes the run either way; raises the 503 APIError if the engine went down."""

        async def drain():
            async for _ in self.outputs():
                pass

        outcome = "cancelled"
        try:
            await until_disconnected(request, drain())
            outcome = "ok"
            return self.finals
        except ClientGone:
            outcome = "client_disconnected"
            return None
        except EngineDeadError as e:
            outcome = "engine_down"
            raise unavailable(str(e), code="engine_unavailable") from None
        except StepError as e:
            outcome = "step_failed"
            raise step_failed(str(e)) from None
        finally:
            self.close(outcome)

    def close(self, outcome: str, status: int = 200) -> None:
        """Aborts whatever is unfinished, frees the admission slots, writes the log line (once)."""
        if self._closed:
            return
        self._closed = True
        if self.stream is not None:
            self.stream.abort()
        if self._admitted:
            self.state.inflight -= self.size
            self.state.limits.settle(self.identity, self._charge, self.prompt_tokens + sum(self._seen))
        done = [f for f in self.finals if f is not None]
        if self.state.audit is not None:
            self.state.audit.write(audit_record(self, status, outcome, done))
            if self._request_state is not None:
                self._request_state.audited = True
        log_request(
            self.request_id,
            self.endpoint,
            status,
            outcome=outcome,
            n=self.size,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=sum(s for s in self._seen),
            finish=[f.outputs[0].finish_reason for f in done] or None,
            ttft_s=self._ttft,
            total_s=time.time() - self.arrival,
        )
        if self.state.settings.log_content:
            log_content(
                self.request_id,
                [self.state.tokenizer.decode(p) for p in self.prompts],
                [f.outputs[0].text for f in done],
            )

    def _most_new_tokens(self, params: list[SamplingParams]) -> int:
        """What the group may generate: each sequence's max_tokens, or what its context leaves."""
        room = self.state.max_model_len
        return sum(
            params[j].max_tokens if params[j].max_tokens is not None else max(0, room - len(ids))
            for ids in self.prompts
            for j in range(self.n)
        )

    def usage_counts(self) -> tuple[int, int, int]:
        """(prompt tokens, completion tokens, prompt tokens from the prefix cache), as OpenAI counts them."""
        finals = [f for f in self.finals if f is not None]
        completion = sum(len(f.outputs[0].token_ids) for f in finals)
        cached = sum(f.metrics.num_cached_tokens for f in finals[:: self.n])
        return self.prompt_tokens, completion, cached


async def until_disconnected(request: Request, work) -> object:
    """Runs `work`; if the client disconnects first, cancels it (aborting its requests) and raises ClientGone."""
    task = asyncio.ensure_future(work)
    done = await first_done(task, asyncio.ensure_future(wait_disconnect(request.receive)))
    if task in done:
        return task.result()
    raise ClientGone()


async def first_done(*tasks: asyncio.Future) -> set[asyncio.Future]:
    """Waits until one of `tasks` ends, then cancels the others and waits for them to stop, so none
    runs on unseen; returns the ones that ended by themselves."""
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return done


async def wait_disconnect(receive) -> None:
    """Returns when the ASGI `receive` reports that the client closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(StreamingResponse):
    """An SSE response that notices a client leaving even while no token is due, and then stops the
    body (so its requests are aborted and their KV blocks freed) instead of generating on for no one."""

    media_type = "text/event-stream"

    def __init__(self, content, run: Run, headers: dict | None = None):
        # no caching, and no buffering by a reverse proxy (nginx) that would hold tokens back
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        try:
            await first_done(
                asyncio.ensure_future(self._send_all(send)), asyncio.ensure_future(wait_disconnect(receive))
            )
        finally:
            await self.body_iterator.aclose()
            self.run.close("client_disconnected")  # a no-op if the body ran and closed the run itself

    async def _send_all(self, send) -> None:
        try:
            await self.stream_response(send)
        except OSError:  # the socket went away mid-write
            pass
