"""POST /v1/chat/completions: messages through the model's chat template, a reply streamed or whole."""

from __future__ import annotations

import asyncio

from starlette.responses import Response

from medvllm.server import openai_format as fmt
from medvllm.server.errors import bad_request
from medvllm.server.generation import Run
from medvllm.server.limits import check_request_tokens, check_sequences
from medvllm.server.parsing import chat_ids, parse, sampling_params
from medvllm.server.protocol import ChatCompletionRequest
from medvllm.server.replies import EventStream, whole_reply
from medvllm.server.structured import ToolMode, compile_constraint, constraint
from medvllm.server.tool_calls import ToolCallText, finish_reason

ENDPOINT = "/v1/chat/completions"


def top_n(req: ChatCompletionRequest) -> int | None:
    """SamplingParams.logprobs for this request: None (no logprobs) or how many alternatives per token."""
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs: true", param="top_logprobs")
    return (req.top_logprobs or 0) if req.logprobs else None


async def create(request, state, request_id: str) -> Response:
    req = await parse(request, ChatCompletionRequest, state)
    logprobs = top_n(req)
    so, tools, field = constraint(req)
    params = sampling_params(req, req.token_limit, logprobs, so)
    check_sequences(state, 1, req.n)
    await compile_constraint(state, so, field)
    # off the event loop: templating and encoding a long conversation must not hold up other streams
    ids = await asyncio.to_thread(chat_ids, state, req)
    check_request_tokens(state, [ids], req.n, req.token_limit)
    run = Run(state, ENDPOINT, request_id, [ids], req.n, request)
    await run.start(params, stream=req.stream, priority=req.priority)
    if req.stream:
        stream = EventStream(run, req, "chat.completion.chunk")
        return stream.response(chunks(run, stream, state.tokenizer, logprobs, tools))

    def choice(index: int, c) -> dict:
        lp = None if logprobs is None else fmt.chat_logprobs(state.tokenizer, c.token_ids, c.logprobs, logprobs)
        if tools is not None:
            call = ToolCallText(tools).call(c.text)
            return fmt.chat_choice(index, None, finish_reason(tools, c.finish_reason), lp) | {
                "message": {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
            }
        return fmt.chat_choice(index, c.text, c.finish_reason, lp)

    return await whole_reply(request, run, "chat.completion", choice)


async def chunks(run: Run, stream: EventStream, tokenizer, logprobs: int | None, tools: ToolMode | None):
    """The chunks as OpenAI sends them: a role chunk per choice, content deltas (or, for forced tool
    calls, the call's name then its arguments' deltas), then an empty-delta chunk with the finish reason
    (the stream adds the usage and [DONE])."""
    calls = [ToolCallText(tools) for _ in range(run.size)] if tools is not None else None
    for index in range(run.size):
        role = {"role": "assistant", "content": None if tools else ""}
        yield stream.chunk(fmt.chat_chunk_choice(index, role, None, None))
    async for index, out, new, entries in run.outputs():
        c = out.outputs[0]
        lp = None
        if logprobs is not None and new:
            lp = fmt.chat_logprobs(tokenizer, new, entries, logprobs)
        if calls is not None:
            call = calls[index]
            named, delta = call.update(c.text, out.finished)
            part = call.header() if named else {"index": 0, "function": {}}
            if named or delta:
                part["function"]["arguments"] = delta
                yield stream.chunk(fmt.chat_chunk_choice(index, {"tool_calls": [part]}, None, lp))
            if out.finished:
                yield stream.chunk(fmt.chat_chunk_choice(index, {}, finish_reason(tools, c.finish_reason), None))
            continue
        if c.delta_text or lp is not None:
            yield stream.chunk(fmt.chat_chunk_choice(index, {"content": c.delta_text}, None, lp))
        if out.finished:
            yield stream.chunk(fmt.chat_chunk_choice(index, {}, c.finish_reason, None))
