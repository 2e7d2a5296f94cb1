"""POST /v1/chat/completions: messages through the model's chat template, a reply streamed or whole."""
from __future__ import annotations

from starlette.responses import JSONResponse, Response

from medvllm.engine.async_engine import EngineDeadError
from medvllm.server import openai_format as fmt
from medvllm.server.errors import APIError, bad_request
from medvllm.server.generation import EventStreamResponse, Run
from medvllm.server.parsing import chat_ids, parse, sampling_params
from medvllm.server.protocol import ChatCompletionRequest

ENDPOINT = "/v1/chat/completions"


def top_n(req: ChatCompletionRequest) -> int | None:
    """SamplingParams.logprobs for this request: None (no logprobs) or how many alternatives per token."""
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


async def create(request, state, request_id: str) -> Response:
    req = await parse(request, ChatCompletionRequest, state)
    logprobs = top_n(req)
    params = sampling_params(req, req.token_limit, logprobs)
    run = Run(state, ENDPOINT, request_id, [chat_ids(state, req)], req.n)
    await run.start(params, stream=req.stream)
    headers = {"X-Request-Id": request_id}
    if req.stream:
        return EventStreamResponse(events(run, req, state, logprobs), run, headers=headers)
    finals = await run.collect(request)
    if finals is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    choices = []
    for index, final in enumerate(finals):
        c = final.outputs[0]
        lp = None if logprobs is None else fmt.chat_logprobs(state.tokenizer, c.token_ids, c.logprobs, logprobs)
        choices.append(fmt.chat_choice(index, c.text, c.finish_reason, lp))
    body = fmt.head(request_id, "chat.completion", run.created, state.model_name) | {
        "choices": choices, "usage": fmt.usage(*run.usage_counts())}
    return JSONResponse(body, headers=headers)


async def events(run: Run, req: ChatCompletionRequest, state, logprobs: int | None):
    """The SSE body as OpenAI sends it: a role chunk per choice, content deltas, an empty-delta chunk with
    the finish reason, then usage in its own chunk (when stream_options.include_usage) and [DONE]."""
    head = fmt.head(run.request_id, "chat.completion.chunk", run.created, state.model_name)
    with_usage = bool(req.stream_options and req.stream_options.include_usage)

    def chunk(index: int, delta: dict, finish: str | None = None, lp: dict | None = None) -> bytes:
        body = head | {"choices": [fmt.chat_chunk_choice(index, delta, finish, lp)]}
        return fmt.sse(body | {"usage": None} if with_usage else body)

    outcome = "client_disconnected"
    try:
        for index in range(run.size):
            yield chunk(index, {"role": "assistant", "content": ""})
        async for index, out, new, entries in run.outputs():
            c = out.outputs[0]
            lp = None
            if logprobs is not None and new:
                lp = fmt.chat_logprobs(state.tokenizer, new, entries, logprobs)
            if c.delta_text or lp is not None:
                yield chunk(index, {"content": c.delta_text}, lp=lp)
            if out.finished:
                yield chunk(index, {}, c.finish_reason)
        if with_usage:
            yield fmt.sse(head | {"choices": [], "usage": fmt.usage(*run.usage_counts())})
        yield fmt.DONE
        outcome = "ok"
    except EngineDeadError as e:
        outcome = "engine_down"
        yield fmt.sse(APIError(503, str(e), type="server_error", code="engine_unavailable").body())
    finally:
        run.close(outcome)
