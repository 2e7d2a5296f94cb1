"""The prompt forms add_request takes (vLLM's): text, token ids, or a dict with either, and what is refused.

Everything is checked here, before the request enters the scheduler: a prompt the model cannot run
(a token id past the embedding table, a nested list) would otherwise fail inside a step.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

from medvllm.errors import RequestError

PROMPT_KEYS = ("prompt", "prompt_token_ids", "cache_salt")
_FORMS = "give a str, a list of token ids, or a dict with 'prompt' (text) or 'prompt_token_ids'"


@dataclass
class Prompt:
    text: str | None
    token_ids: list[int]
    cache_salt: str | None = None


def parse_prompt(prompt, tokenizer, vocab_size: int) -> Prompt:
    salt = None
    if isinstance(prompt, dict):
        unknown = [k for k in prompt if k not in PROMPT_KEYS]
        if unknown:
            raise RequestError(f"prompt key {unknown[0]!r} is not supported: {_FORMS}, and optionally 'cache_salt'")
        if ("prompt" in prompt) == ("prompt_token_ids" in prompt):
            raise RequestError(
                f"a prompt dict needs exactly one of 'prompt' and 'prompt_token_ids', got {list(prompt)}"
            )
        salt = prompt.get("cache_salt")
        if salt is not None and (not isinstance(salt, str) or not salt):
            raise RequestError(f"cache_salt={salt!r} is invalid: give a non-empty str, or leave it out")
        if "prompt" in prompt:
            prompt = prompt["prompt"]
            if not isinstance(prompt, str):
                raise RequestError(
                    f"'prompt' must be a str, got {type(prompt).__name__}: use 'prompt_token_ids' for ids"
                )
        else:
            prompt = prompt["prompt_token_ids"]
            if not isinstance(prompt, (list, tuple)):
                raise RequestError(f"'prompt_token_ids' must be a list of ints, got {type(prompt).__name__}")
    if isinstance(prompt, str):
        if not prompt:
            raise RequestError("the prompt is empty: give at least one token")
        parsed = Prompt(prompt, list(tokenizer.encode(prompt)), salt)
    elif isinstance(prompt, (list, tuple)):
        parsed = Prompt(None, _token_ids(prompt), salt)
    else:
        raise RequestError(f"a prompt of type {type(prompt).__name__} is not supported: {_FORMS}")
    _check_vocabulary(parsed.token_ids, vocab_size)
    return parsed


def _token_ids(ids) -> list[int]:
    for i, t in enumerate(ids):
        if isinstance(t, bool) or not isinstance(t, Integral):
            raise RequestError(
                f"prompt token at position {i} is a {type(t).__name__}, not an int: give one prompt as a flat list "
                "of token ids (a list of prompts goes to LLM.generate)"
            )
    return [int(t) for t in ids]


def _check_vocabulary(ids: list[int], vocab_size: int) -> None:
    if ids and (min(ids) < 0 or max(ids) >= vocab_size):
        i, t = next((i, t) for i, t in enumerate(ids) if not 0 <= t < vocab_size)
        raise RequestError(
            f"prompt token id {t} at position {i} is outside the vocabulary [0, {vocab_size}): "
            "encode the prompt with this model's tokenizer"
        )
