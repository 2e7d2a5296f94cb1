"""The hyperparameters of a GGUF model, under transformers' config names, without importing transformers.

Importing a transformers config class pulls in most of transformers (over a second on a small CPU),
which is most of a small GGUF model's start-up. The engine only reads attributes, so a GGUF model's
config is a plain attribute bag holding what the file states plus the defaults transformers' own config
class would fill in; tests check it field by field against that class.
"""

from __future__ import annotations

import types

# What transformers' config class of each model type sets when the file does not say (transformers 5)
DEFAULTS = {
    "llama": dict(hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False),
    "mistral": dict(hidden_act="silu", sliding_window=4096, tie_word_embeddings=False),
    "qwen2": dict(hidden_act="silu", use_sliding_window=False, sliding_window=None, max_window_layers=28),
    "qwen3": dict(
        hidden_act="silu", attention_bias=False, use_sliding_window=False, sliding_window=None, max_window_layers=28
    ),
    "gemma2": dict(
        hidden_activation="gelu_pytorch_tanh",
        attention_bias=False,
        sliding_window=4096,
        attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0,
        use_bidirectional_attention=None,
        tie_word_embeddings=True,
    ),
    "gemma3_text": dict(
        hidden_activation="gelu_pytorch_tanh",
        attention_bias=False,
        sliding_window=4096,
        attn_logit_softcapping=None,
        final_logit_softcapping=None,
        use_bidirectional_attention=False,
        tie_word_embeddings=True,
    ),
}
# every `sliding_window_pattern`-th layer is global (Gemma 2 alternates; Gemma 3 has five local per global)
GLOBAL_EVERY = {"gemma2": 2, "gemma3_text": 6}


class ModelConfig(types.SimpleNamespace):
    """Attribute access as on a transformers PretrainedConfig; `to_dict()` as there."""

    def to_dict(self) -> dict:
        return dict(vars(self))


def model_config(model_type: str, fields: dict) -> ModelConfig:
    """`fields`: what the file states (a None value is passed on as None, as transformers keeps it)."""
    values = {"model_type": model_type} | DEFAULTS[model_type] | {"dtype": None} | fields
    n = values["num_hidden_layers"]
    if "layer_types" not in values and model_type in GLOBAL_EVERY:
        every = GLOBAL_EVERY[model_type]
        values["layer_types"] = ["full_attention" if (i + 1) % every == 0 else "sliding_attention" for i in range(n)]
    elif "layer_types" not in values and model_type.startswith("qwen"):
        values["layer_types"] = ["full_attention"] * n  # sliding only with use_sliding_window, which GGUF never sets
    values["rope_scaling"] = values.get("rope_parameters")  # transformers 5 keeps the v4 name as an alias
    return ModelConfig(**values)
