"""A GGUF model (default: the embedded one) as a Hugging Face folder in bf16, written from our own loader.

transformers refuses save_pretrained on a model loaded from GGUF, and vLLM reads a folder best, so the
dequantized GGUF weights are saved as config.json + model.safetensors + tokenizer files. Idempotent.

    python benchmarks/peers/hf_export.py [OUT_DIR]
"""

from __future__ import annotations

import json
import os
import sys

import torch
from common import cache_dir

DONE = "model.safetensors"


def default_folder(model: str | None = None) -> str:
    """The cache folder of a GGUF file's export (the default model keeps its historical name)."""
    from medvllm.loader import default_model_path

    if model is None or os.path.abspath(model) == os.path.abspath(default_model_path()):
        return os.path.join(cache_dir(), "smollm2-hf-bf16")
    return os.path.join(cache_dir(), os.path.splitext(os.path.basename(model))[0] + "-hf-bf16")


def export(folder: str | None = None, model: str | None = None) -> str:
    """Write the folder unless it is already complete; returns its path."""
    from safetensors.torch import save_file

    from medvllm.loader import open_model

    folder = folder or default_folder(model)
    if os.path.isfile(os.path.join(folder, DONE)):
        return folder
    os.makedirs(folder, exist_ok=True)
    source = open_model(model)
    config = source.hf_config.to_dict()
    config["torch_dtype"] = config["dtype"] = "bfloat16"
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:  # readers on transformers 4 look for it at the top level
        config.setdefault("rope_theta", rope["rope_theta"])
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    source.tokenizer.save_pretrained(folder)
    _portable_tokenizer_config(folder)
    tensors = {name: t.to(torch.bfloat16).contiguous() for name, t in source.iter_weights()}
    save_file(tensors, os.path.join(folder, DONE + ".partial"), metadata={"format": "pt"})
    os.replace(os.path.join(folder, DONE + ".partial"), os.path.join(folder, DONE))  # written last: marks done
    return folder


def _portable_tokenizer_config(folder: str) -> None:
    """transformers 5 names its tokenizer class TokenizersBackend; older versions know the fast class."""
    path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(path):
        return
    with open(path) as f:
        cfg = json.load(f)
    if cfg.get("tokenizer_class") in (None, "TokenizersBackend"):
        cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2)


if __name__ == "__main__":
    print(export(sys.argv[1] if len(sys.argv) > 1 else None))
