"""POST /v1/completions: text (or token-id) prompts in, completions out, streamed or whole."""
from __future__ import annotations

from starlette.responses import JSONResponse, Response

from medvllm.engine.async_engine import EngineDeadError
from medvllm.server import openai_format as fmt
from medvllm.server.errors import APIError
from medvllm.server.generation import EventStreamResponse, Run
from medvllm.server.parsing import parse, prompt_ids, sampling_params
from medvllm.server.protocol import CompletionRequest

ENDPOINT = "/v1/completions"


async def create(request, state, request_id: str) -> Response:
    req = await parse(request, CompletionRequest, state)
    prompts = [prompt_ids(state, p) for p in req.prompts()]
    params = sampling_params(req, req.max_tokens, req.logprobs)
    run = Run(state, ENDPOINT, request_id, prompts, req.n)
    await run.start(params, stream=req.stream)
    headers = {"X-Request-Id": request_id}
    if req.stream:
        return EventStreamResponse(events(run, req, state), run, headers=headers)
    finals = await run.collect(request)
    if finals is None:
        return Response(status_code=499)  # the client is gone; nobody reads this
    choices = []
    for index, final in enumerate(finals):
        c = final.outputs[0]
        lp = None if req.logprobs is None else fmt.completion_logprobs(state.tokenizer, c.token_ids, c.logprobs,
                                                                        req.logprobs)
        choices.append(fmt.completion_choice(index, c.text, c.finish_reason, lp))
    body = fmt.head(request_id, "text_completion", run.created, state.model_name) | {
        "choices": choices, "usage": fmt.usage(*run.usage_counts())}
    return JSONResponse(body, headers=headers)


async def events(run: Run, req: CompletionRequest, state):
    """The SSE body: one chunk per new piece of text, then usage (when asked) and [DONE]."""
    head = fmt.head(run.request_id, "text_completion", run.created, state.model_name)
    with_usage = bool(req.stream_options and req.stream_options.include_usage)
    offsets = [0] * run.size
    outcome = "client_disconnected"
    try:
        async for index, out, new, entries in run.outputs():
            c = out.outputs[0]
            wants_logprobs = req.logprobs is not None and bool(new)
            if not (c.delta_text or out.finished or wants_logprobs):
                continue  # held-back text (a partial character or a possible stop string)
            lp = None
            if wants_logprobs:
                lp = fmt.completion_logprobs(state.tokenizer, new, entries, req.logprobs, offsets[index])
                offsets[index] += sum(len(t) for t in lp["tokens"])
            chunk = head | {"choices": [fmt.completion_choice(index, c.delta_text, c.finish_reason, lp)]}
            yield fmt.sse(chunk | {"usage": None} if with_usage else chunk)
        if with_usage:
            yield fmt.sse(head | {"choices": [], "usage": fmt.usage(*run.usage_counts())})
        yield fmt.DONE
        outcome = "ok"
    except EngineDeadError as e:
        outcome = "engine_down"
        yield fmt.sse(APIError(503, str(e), type="server_error", code="engine_unavailable").body())
    finally:
        run.close(outcome)
