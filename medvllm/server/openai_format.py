"""Response bodies and stream chunks shaped exactly as OpenAI's, and the SSE framing around them."""

from __future__ import annotations

import json


def sse(data: dict | str) -> bytes:
    """One server-sent event, as OpenAI frames it: `data: <compact JSON>` and a blank line."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"), ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


DONE = sse("[DONE]")


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def head(request_id: str, obj: str, created: int, model: str) -> dict:
    return {"id": request_id, "object": obj, "created": created, "model": model}


# ---- /v1/completions
def completion_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def completion_logprobs(tokenizer, token_ids: list[int], entries: list[dict], top_n: int, offset: int = 0) -> dict:
    """The legacy completions `logprobs` object: tokens, token_logprobs, top_logprobs, text_offset."""
    tokens, token_logprobs, tops, offsets = [], [], [], []
    for token_id, entry in zip(token_ids, entries):
        text = token_text(tokenizer, token_id)
        tokens.append(text)
        token_logprobs.append(entry[token_id])
        tops.append({token_text(tokenizer, i): lp for i, lp in top_entries(entry, top_n)} if top_n else None)
        offsets.append(offset)
        offset += len(text)
    return {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}


# ---- /v1/chat/completions
def chat_choice(index: int, text: str, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {
        "index": index,
        "message": {"role": "assistant", "content": text, "refusal": None},
        "logprobs": logprobs,
        "finish_reason": finish_reason,
    }


def chat_chunk_choice(index: int, delta: dict, finish_reason: str | None, logprobs: dict | None) -> dict:
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_logprobs(tokenizer, token_ids: list[int], entries: list[dict], top_n: int) -> dict:
    """The chat `logprobs` object: {"content": [{token, logprob, bytes, top_logprobs}, ...]}."""
    content = []
    for token_id, entry in zip(token_ids, entries):
        content.append(
            _chat_token(tokenizer, token_id, entry[token_id])
            | {"top_logprobs": [_chat_token(tokenizer, i, lp) for i, lp in top_entries(entry, top_n)]}
        )
    return {"content": content}


def _chat_token(tokenizer, token_id: int, logprob: float) -> dict:
    text = token_text(tokenizer, token_id)
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}


# ---- shared
def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id], skip_special_tokens=False)


def top_entries(entry: dict[int, float], n: int) -> list[tuple[int, float]]:
    """The n most likely tokens of one step (the engine also records the sampled one when outside them)."""
    return sorted(entry.items(), key=lambda kv: -kv[1])[:n]
