"""ModelInfo for a model path without loading its weights (best effort: None when it cannot tell)."""

from __future__ import annotations

import dataclasses
import json
import os
from collections import Counter

from medvllm.deployment.memory import ModelInfo


def model_info_for(model: str | None) -> ModelInfo | None:
    """Sizes of `model` (a Hugging Face folder, a .gguf file, or None for the embedded default)."""
    try:
        if model is not None and os.path.isdir(os.path.expanduser(model)):
            folder = os.path.expanduser(model)
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                cfg = json.load(f)
            return ModelInfo.from_hf_config(cfg.get("text_config", cfg), name=os.path.basename(folder.rstrip("/")))
        from medvllm.loader import default_model_path
        from medvllm.loader.gguf_config import build_config
        from medvllm.loader.gguf_file import GGUFFile

        path = default_model_path() if model is None else os.path.expanduser(model)
        f = GGUFFile(path)
        info = ModelInfo.from_hf_config(
            build_config(f.metadata, set(f.tensors), path).to_dict(), name=os.path.basename(path)
        )
        return dataclasses.replace(info, file_bytes=os.path.getsize(path), quant_type=_quant_type(f))
    except Exception:  # noqa: BLE001 - an unreadable model is reported by the loader, not here
        return None


FLOAT_TYPES = ("F32", "F16", "BF16", "F64")


def _quant_type(f) -> str | None:
    """The most common type among the file's quantized matrices, None when they are all float."""
    counts = Counter(i.qtype.name for i in f.tensors.values() if len(i.shape) == 2 and i.qtype.name not in FLOAT_TYPES)
    return counts.most_common(1)[0][0] if counts else None
