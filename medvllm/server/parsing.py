"""From an HTTP request to what the engine runs: auth, readiness, JSON, fields, prompt token ids, SamplingParams.

Every refusal is an APIError in OpenAI's shape: 401 before anything else, 503 while loading, then 400s.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from medvllm.chat_template import encode_chat
from medvllm.errors import RequestError
from medvllm.sampling_params import SamplingParams
from medvllm.server import json_body
from medvllm.server.errors import bad_request, unavailable
from medvllm.server.keys import Identity
from medvllm.server.limits import read_body
from medvllm.server.protocol import ChatCompletionRequest, SamplingFields, describe


def check_ready(state, authorization: str | None) -> Identity:
    """Who is asking (401 for a bad key), once the engine can take requests (503 until then)."""
    identity = state.keys.identify(authorization)
    if state.status == "loading":
        raise unavailable(
            "the model is still loading: retry after the Retry-After delay (GET /health says when it is ready)",
            code="model_loading",
            retry_after_s=state.settings.loading_retry_after_s,
        )
    if state.status != "ready" or not state.engine.alive:
        why = {"failed": "the model failed to load", "stopping": "the server is shutting down"}.get(
            state.status, "the engine stopped"
        )
        raise unavailable(f"{why}: see the server log", code="engine_unavailable")
    return identity


async def parse(request, model_cls: type[BaseModel], state) -> SamplingFields:
    request.state.identity = check_ready(state, request.headers.get("authorization"))
    raw = await read_body(request, state.settings.max_body_bytes)
    try:
        body = json_body.loads(raw)
    except json_body.NotJSON as e:
        raise bad_request(f"the request body is not valid JSON ({e}): send one JSON object") from None
    if not isinstance(body, dict):
        raise bad_request(f"the request body is a JSON {type(body).__name__}, not an object: send one JSON object")
    try:
        req = model_cls.model_validate(body)
    except ValidationError as e:
        message, param = describe(e)
        raise bad_request(message, param=param) from None
    if req.model != state.model_name:
        raise bad_request(
            f"model {req.model!r} is not served here: this server serves {state.model_name!r} "
            "(GET /v1/models lists it)",
            param="model",
            code="model_not_found",
        )
    extra = req.unsupported()
    if extra:
        raise bad_request(
            f"unsupported field(s) {', '.join(extra)}: this server does not implement "
            f"{'it' if len(extra) == 1 else 'them'}; remove {'it' if len(extra) == 1 else 'them'} "
            "from the request",
            param=extra[0],
            code="unsupported_parameter",
        )
    if req.priority is None:  # the key's default, else the server's (scheduling_policy='priority' acts on it)
        identity = request.state.identity
        req.priority = identity.priority if identity.priority is not None else state.settings.default_priority
    return req


def prompt_ids(state, prompt: str | list[int]) -> list[int]:
    """Token ids of a completions prompt, encoded exactly as the offline LLM.generate encodes text."""
    if isinstance(prompt, str):
        return list(state.tokenizer.encode(prompt))
    bad = [t for t in prompt if t >= state.vocab_size]
    if bad:
        raise bad_request(
            f"prompt token id {bad[0]} is out of range: the model's vocabulary has {state.vocab_size} tokens",
            param="prompt",
        )
    return list(prompt)


def chat_ids(state, req: ChatCompletionRequest) -> list[int]:
    """Token ids of a conversation through the model's chat template, as LLM.chat encodes it."""
    messages = [m.as_template_message() for m in req.messages]
    try:
        return encode_chat(state.tokenizer, messages)
    except RequestError:  # the model has no chat template: name the endpoint that takes plain text
        raise bad_request(
            "this model has no chat template: send plain text to /v1/completions instead", param="messages"
        ) from None
    except Exception as e:  # noqa: BLE001 - the template's own complaint (roles out of order, ...)
        raise bad_request(f"the model's chat template refused these messages: {e}", param="messages") from None


def sampling_params(
    req: SamplingFields, max_tokens: int | None, logprobs: int | None, structured=None
) -> list[SamplingParams]:
    """One SamplingParams per choice (n); with a seed, choice j uses seed + j so choices differ."""
    seeds = [None] * req.n if req.seed is None else [req.seed + j for j in range(req.n)]
    fields = dict(
        temperature=1.0 if req.temperature is None else req.temperature,  # OpenAI's default
        top_p=1.0 if req.top_p is None else req.top_p,
        top_k=-1 if req.top_k is None else req.top_k,
        min_p=0.0 if req.min_p is None else req.min_p,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        ignore_eos=bool(req.ignore_eos),
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        max_tokens=max_tokens,
        stop=req.stop,
        logprobs=logprobs,
        structured_outputs=structured,  # each choice gets its own matcher in the engine
    )
    try:
        return [SamplingParams(**fields, seed=seed) for seed in seeds]
    except RequestError as e:
        param = str(e).split("=", 1)[0]
        raise bad_request(str(e), param=param if param.isidentifier() else None) from None
