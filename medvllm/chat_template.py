"""A conversation to prompt token ids through the model's own chat template: one encoding for
`LLM.chat` and the server's /v1/chat/completions, so both send the model the same ids."""

from __future__ import annotations

from medvllm.errors import RequestError


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def encode_chat(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` ending with the opening of the assistant's reply.

    Raises RequestError only when the model has no chat template; a template's own refusal (roles out
    of order, ...) is raised as the template raised it.
    """
    if not has_chat_template(tokenizer):
        raise RequestError("this model has no chat template: send plain text prompts instead")
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return list(ids)
