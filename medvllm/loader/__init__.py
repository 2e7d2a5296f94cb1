"""Model loading: a Hugging Face folder or a GGUF file -> ModelSource (config, tokenizer, weights)."""

import os

from medvllm.errors import ModelLoadError
from medvllm.loader.default import default_model_path
from medvllm.loader.source import ModelSource

__all__ = ["ModelSource", "open_model", "default_model_path"]


def open_model(model: str | None) -> ModelSource:
    """Open `model` (a .gguf file, a Hugging Face folder, or None for the embedded default)."""
    path = default_model_path() if model is None else os.path.expanduser(str(model))
    if os.path.isdir(path):
        from medvllm.loader.hf_folder import open_folder  # imported lazily: each pulls in transformers

        return open_folder(path)
    if os.path.isfile(path):
        from medvllm.loader.gguf_source import open_gguf

        return open_gguf(path)
    raise ModelLoadError(
        f"model path {path!r} does not exist; pass an existing .gguf file or Hugging Face model folder "
        f"(models are never downloaded), or omit it to use the embedded default"
    )
