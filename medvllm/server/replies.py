"""How a started Run answers its API call: one JSON body once every choice is done, or server-sent
events framed and ended as OpenAI ends them. Both endpoints answer through here."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from starlette.responses import JSONResponse, Response

from medvllm.engine.async_engine import EngineDeadError
from medvllm.errors import StepError
from medvllm.outputs import CompletionOutput
from medvllm.server import openai_format as fmt
from medvllm.server.errors import step_failed, unavailable
from medvllm.server.generation import EventStreamResponse, Run
from medvllm.server.protocol import SamplingFields


async def whole_reply(request, run: Run, obj: str, choice: Callable[[int, CompletionOutput], dict]) -> Response:
    """One JSON body of type `obj`: `choice(index, output)` for each finished choice, and the usage."""
    finals = await run.collect(request)
    if finals is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    body = fmt.head(run.request_id, obj, run.created, run.state.model_name) | {
        "choices": [choice(index, final.outputs[0]) for index, final in enumerate(finals)],
        "usage": fmt.usage(*run.usage_counts()),
    }
    return JSONResponse(body, headers={"X-Request-Id": run.request_id})


class EventStream:
    """The chunks of one streamed answer of type `obj`, and the end every stream shares."""

    def __init__(self, run: Run, req: SamplingFields, obj: str):
        self.run = run
        self.head = fmt.head(run.request_id, obj, run.created, run.state.model_name)
        self.with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(self, choice: dict) -> bytes:
        """One chunk with one choice; `"usage": null` on it when the last chunk will carry the usage."""
        body = self.head | {"choices": [choice]}
        return fmt.sse(body | {"usage": None} if self.with_usage else body)

    def response(self, chunks: AsyncIterator[bytes]) -> EventStreamResponse:
        return EventStreamResponse(self._framed(chunks), self.run, headers={"X-Request-Id": self.run.request_id})

    async def _framed(self, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """`chunks`, then the usage in a chunk of its own (when stream_options.include_usage asks) and
        [DONE]; a 503 error event instead if the engine goes down. The run is closed however it ends."""
        outcome = "client_disconnected"
        try:
            async with aclosing(chunks):
                async for event in chunks:
                    yield event
            if self.with_usage:
                yield fmt.sse(self.head | {"choices": [], "usage": fmt.usage(*self.run.usage_counts())})
            yield fmt.DONE
            outcome = "ok"
        except EngineDeadError as e:
            outcome = "engine_down"
            yield fmt.sse(unavailable(str(e), code="engine_unavailable").body())  # as a non-streamed 503
        except StepError as e:
            outcome = "step_failed"
            yield fmt.sse(step_failed(str(e)).body())  # as a non-streamed 500
        finally:
            self.run.close(outcome)
