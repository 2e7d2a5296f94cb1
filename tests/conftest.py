"""Shared fixtures: the real default model, in our engine and in transformers (the oracle).

tests/ is a package: test files import the helper modules as `from tests.tiny_models import ...`."""

from __future__ import annotations

import os

import pytest

CHAT_PROMPTS = [
    "What is hypertension?",
    "List three symptoms of type 2 diabetes.",
    "How does metformin work?",
    "What is a normal potassium level in adults?",
    "Explain sepsis in two sentences.",
]


@pytest.fixture(scope="session")
def default_llm():
    from medvllm import LLM

    return LLM(max_model_len=2048, max_num_batched_tokens=4096)


@pytest.fixture(scope="session")
def hf_default():
    """(model, tokenizer) of the default GGUF, dequantized to float32 by transformers itself."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medvllm.loader import default_model_path

    path = default_model_path()
    folder, name = os.path.dirname(path), os.path.basename(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32").eval()
    return model, tokenizer
