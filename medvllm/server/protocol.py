"""Request bodies of the OpenAI API we serve, as strict pydantic models.

Types are checked strictly (a string is not a number). Fields OpenAI defines that we do not implement
(and any unknown field) are collected, and the request is refused with a 400 naming them, unless
their value asks for nothing (null, false, empty).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from medvllm.server.limits import MAX_N, MAX_PROMPTS


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(strict=True, extra="allow")

    model: str
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: Any = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    user: str | None = None  # an opaque end-user id; accepted, never logged
    # extensions vLLM also accepts
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None  # vLLM's and llama.cpp's extra field: generate max_tokens whatever comes
    # structured outputs (server/structured.py): OpenAI's response_format, and vLLM's fields
    response_format: dict | None = None
    structured_outputs: Any = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    priority: int | None = None  # lower is scheduled sooner under scheduling_policy='priority'; None: the key's default

    @field_validator("stop")
    @classmethod
    def _stop(cls, v):
        if v is None or isinstance(v, str) or (isinstance(v, list) and all(isinstance(s, str) for s in v)):
            return v
        raise ValueError("must be a string or a list of strings")

    def unsupported(self) -> list[str]:
        """Fields given that this server does not implement (empty values ask for nothing)."""
        return sorted(k for k, v in (self.model_extra or {}).items() if v not in (None, False, "", [], {}))


class CompletionRequest(SamplingFields):
    prompt: Any
    max_tokens: int | None = 16
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False
    best_of: int | None = None

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v):
        if isinstance(v, str) or _is_ids(v):
            return v
        if isinstance(v, list) and v and (all(isinstance(p, str) for p in v) or all(_is_ids(p) for p in v)):
            if len(v) > MAX_PROMPTS:
                raise ValueError(
                    f"a list of {len(v)} prompts is over the limit of {MAX_PROMPTS} per request: "
                    "split it over several requests"
                )
            return v
        raise ValueError(
            "must be a string, a list of strings, a list of token ids, or a list of token-id lists (none empty)"
        )

    def prompts(self) -> list[str | list[int]]:
        """The prompt field as a list of prompts (text or token ids)."""
        if isinstance(self.prompt, str) or _is_ids(self.prompt):
            return [self.prompt]
        return list(self.prompt)

    def unsupported(self) -> list[str]:
        extra = super().unsupported()
        if self.echo:
            extra.append("echo")
        if self.best_of not in (None, 1, self.n):
            extra.append("best_of")
        return extra


# OpenAI's content part types that carry media, not text
MEDIA_PARTS = ("image_url", "input_image", "image", "input_audio", "audio", "file", "video_url")


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")
    role: Literal["system", "developer", "user", "assistant"]
    content: Any = None
    name: str | None = None

    @field_validator("content")
    @classmethod
    def _content(cls, v):
        if v is None or isinstance(v, str):
            return v
        if isinstance(v, list) and all(
            isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) and len(p) == 2
            for p in v
        ):
            return v
        if isinstance(v, list) and any(isinstance(p, dict) and p.get("type") in MEDIA_PARTS for p in v):
            raise ValueError(
                "holds an image or audio part, which this server cannot read yet (it serves a multimodal "
                "model's language model only): send the message as text"
            )
        raise ValueError(
            'must be a string or a list of {"type": "text", "text": ...} parts (this server takes text only)'
        )

    def as_template_message(self) -> dict:
        content = self.content
        if isinstance(content, list):
            content = "".join(part["text"] for part in content)
        # chat templates know "system"; OpenAI's newer "developer" role means the same
        role = "system" if self.role == "developer" else self.role
        return {"role": role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None  # only as forced calls: tool_choice "required" or a named function
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None  # a forced call is one call

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


def _is_ids(v) -> bool:
    return isinstance(v, list) and bool(v) and all(type(t) is int and t >= 0 for t in v)


def describe(err: ValidationError) -> tuple[str, str | None]:
    """One line naming each bad field and why, and the first bad field (OpenAI's `param`)."""
    parts: list[str] = []
    first: str | None = None
    for e in err.errors():
        path = _path(e["loc"])
        first = first or path
        if e["type"] == "missing":
            parts.append(f"{path} is required")
        elif e["type"] == "extra_forbidden":
            parts.append(f"{path} is not supported")
        else:
            parts.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts), first


def _path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out
