"""What one HTTP request may ask of the server: its body size, how many sequences it starts, and how
many tokens (prompt plus completions) it may take. Each refusal names the limit and how to get under it."""

from __future__ import annotations

from medvllm.server.errors import APIError, bad_request

MAX_N = 16  # choices per prompt
MAX_PROMPTS = 128  # prompts in one /v1/completions request
REQUEST_TOKENS_PER_MODEL_LEN = MAX_N  # default token limit: as many full-length sequences as n allows


async def read_body(request, limit: int) -> bytes:
    """The request body, refused with 413 once it passes `limit` bytes: at once when the declared
    Content-Length says so (nothing is read), else as soon as the bytes received pass it."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(limit, f"{int(declared)} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit, f"over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(limit: int, size: str) -> APIError:
    return APIError(
        413,
        f"the request body is {size}, over this server's limit of {limit} bytes (--max-body-bytes): send "
        "fewer or shorter prompts per request",
        code="request_too_large",
    )


def check_sequences(state, prompts: int, n: int) -> None:
    """A request that starts more sequences than can ever be admitted at once would wait forever: 400."""
    capacity = state.engine.max_num_seqs + state.settings.max_queue
    if prompts * n > capacity:
        raise bad_request(
            f"this request starts {prompts * n} sequences ({prompts} prompt(s) x n={n}), over this server's "
            f"limit of {capacity} at once (max_num_seqs + --max-queue): lower n or split the prompts over "
            "several requests",
            param="n" if prompts == 1 else "prompt",
        )


def check_request_tokens(state, prompts: list[list[int]], n: int, max_tokens: int | None) -> None:
    """Prompt tokens + n x max_tokens over the prompts (no max_tokens: up to max_model_len each) must stay
    within the per-request token limit."""
    limit = state.settings.max_request_tokens or REQUEST_TOKENS_PER_MODEL_LEN * state.max_model_len
    total = 0
    for ids in prompts:
        completion = max_tokens if max_tokens is not None else max(state.max_model_len - len(ids), 0)
        total += len(ids) + n * completion
    if total > limit:
        raise bad_request(
            f"this request asks for up to {total} tokens (prompt tokens + n x max_tokens over its prompts), "
            f"over this server's limit of {limit} per request (--max-request-tokens): lower max_tokens or n, "
            "or split the prompts over several requests",
            param="max_tokens",
        )
