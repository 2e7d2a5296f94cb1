"""POST /v1/completions: text (or token-id) prompts in, completions out, streamed or whole."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from medvllm.server import openai_format as fmt
from medvllm.server.generation import Run
from medvllm.server.limits import check_request_tokens, check_sequences
from medvllm.server.parsing import parse, prompt_ids, sampling_params
from medvllm.server.protocol import CompletionRequest
from medvllm.server.replies import EventStream, whole_reply
from medvllm.server.structured import compile_constraint, constraint

ENDPOINT = "/v1/completions"


async def create(request, state, request_id: str) -> Response:
    req = await parse(request, CompletionRequest, state)
    so, _, field = constraint(req)
    check_sequences(state, len(req.prompts()), req.n)
    await compile_constraint(state, so, field)
    # off the event loop: a long prompt must not hold up other requests' streams while it is encoded
    prompts = await asyncio.to_thread(lambda: [prompt_ids(state, p) for p in req.prompts()])
    check_request_tokens(state, prompts, req.n, req.max_tokens)
    params = sampling_params(req, req.max_tokens, req.logprobs, so)
    run = Run(state, ENDPOINT, request_id, prompts, req.n, request)
    await run.start(params, stream=req.stream, priority=req.priority)
    if req.stream:
        stream = EventStream(run, req, "text_completion")
        return stream.response(chunks(run, stream, state.tokenizer, req.logprobs))

    def choice(index: int, c) -> dict:
        lp = (
            None
            if req.logprobs is None
            else fmt.completion_logprobs(state.tokenizer, c.token_ids, c.logprobs, req.logprobs)
        )
        return fmt.completion_choice(index, c.text, c.finish_reason, lp)

    return await whole_reply(request, run, "text_completion", choice)


async def chunks(run: Run, stream: EventStream, tokenizer, logprobs: int | None):
    """One chunk per new piece of text (the stream adds the usage and [DONE])."""
    offsets = [0] * run.size
    async for index, out, new, entries in run.outputs():
        c = out.outputs[0]
        wants_logprobs = logprobs is not None and bool(new)
        if not (c.delta_text or out.finished or wants_logprobs):
            continue  # held-back text (a partial character or a possible stop string)
        lp = None
        if wants_logprobs:
            lp = fmt.completion_logprobs(tokenizer, new, entries, logprobs, offsets[index])
            offsets[index] += sum(len(t) for t in lp["tokens"])
        yield stream.chunk(fmt.completion_choice(index, c.delta_text, c.finish_reason, lp))
