"""Multimodal checkpoints (MedGemma 4B, Gemma 3 27B multimodal) served as their language model alone.

Text in, text out: the engine loads the language model's weights under the text-only model's names and
leaves the vision tower and its projector on disk. A request carrying an image is refused upstream.
"""

from __future__ import annotations

from collections.abc import Callable

# wrapper architecture -> (its language model as a text-only architecture, stored prefix -> our prefix).
# Both spellings occur: checkpoints keep transformers 4's names, transformers 5 keeps its own in memory.
LANGUAGE_MODELS = {
    "Gemma3ForConditionalGeneration": (
        "Gemma3ForCausalLM",
        {"language_model.model.": "model.", "model.language_model.": "model.", "language_model.lm_head.": "lm_head."},
    ),
}


def language_model(config) -> tuple[object, Callable[[str], str | None]]:
    """(the config to build, a renaming of stored tensor names: None for the tensors left out); a
    text-only model is itself, its names unchanged."""
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch not in LANGUAGE_MODELS:
        return config, lambda name: name
    text_arch, prefixes = LANGUAGE_MODELS[arch]
    text = config.text_config
    text.architectures = [text_arch]

    def rename(name: str) -> str | None:
        for stored, ours in prefixes.items():
            if name.startswith(stored):
                return ours + name[len(stored) :]
        if name == "lm_head.weight":
            return name
        return None  # vision tower, projector

    return text, rename
