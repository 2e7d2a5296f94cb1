"""Build a model config from GGUF metadata (llama.cpp key names -> HF config fields)."""

import numpy as np

from medvllm.errors import ModelLoadError
from medvllm.loader.gguf_rope import llama3_rope
from medvllm.loader.model_config import ModelConfig, model_config

# GGUF general.architecture -> (HF model_type, HF *ForCausalLM class)
GGUF_ARCHITECTURES = {
    "llama": ("llama", "LlamaForCausalLM"),
    "mistral": ("mistral", "MistralForCausalLM"),
    "qwen2": ("qwen2", "Qwen2ForCausalLM"),
    "qwen3": ("qwen3", "Qwen3ForCausalLM"),
    "gemma2": ("gemma2", "Gemma2ForCausalLM"),
    "gemma3": ("gemma3_text", "Gemma3ForCausalLM"),
}
# archs whose Q/K rows llama.cpp permuted at conversion (the others use the NEOX rope layout as is)
PERMUTED_QK = ("llama", "mistral")


def gguf_architecture(metadata: dict, path: str) -> str:
    arch = metadata.get("general.architecture")
    if arch not in GGUF_ARCHITECTURES:
        raise ModelLoadError(
            f"GGUF architecture {arch!r} in {path} is not supported; supported GGUF architectures are "
            f"{', '.join(GGUF_ARCHITECTURES)}: use a model of one of those families"
        )
    return arch


def build_config(
    metadata: dict, tensor_names: set[str], path: str, rope_factors: np.ndarray | None = None
) -> ModelConfig:
    """`rope_factors`: the rope_freqs.weight tensor, when the file has one (Llama 3 rope scaling)."""
    arch = gguf_architecture(metadata, path)
    model_type, cls_name = GGUF_ARCHITECTURES[arch]

    def key(name, default=None, required=False):
        value = metadata.get(f"{arch}.{name}", default)
        if value is None and required:
            raise ModelLoadError(
                f"GGUF metadata key '{arch}.{name}' is missing from {path}; the file is incomplete, "
                f"re-convert it with llama.cpp's convert_hf_to_gguf.py"
            )
        return value

    hidden = key("embedding_length", required=True)
    heads = key("attention.head_count", required=True)
    # key_length is the true head size; llama/mistral files often only state the rotary width,
    # which equals the head size for those archs
    head_dim = key("attention.key_length") or (arch in PERMUTED_QK and key("rope.dimension_count")) or hidden // heads
    tokens = metadata.get("tokenizer.ggml.tokens")
    fields = dict(
        architectures=[cls_name],
        vocab_size=key("vocab_size") or (len(tokens) if tokens else None),
        hidden_size=hidden,
        intermediate_size=key("feed_forward_length", required=True),
        num_hidden_layers=key("block_count", required=True),
        num_attention_heads=heads,
        num_key_value_heads=key("attention.head_count_kv", heads),
        head_dim=head_dim,
        max_position_embeddings=key("context_length", 4096),
        rms_norm_eps=key("attention.layer_norm_rms_epsilon", 1e-6),
        rope_parameters=_rope(key, path, head_dim, rope_factors),
        # llama.cpp writes output.weight only when the head is not the embedding matrix
        tie_word_embeddings="output.weight" not in tensor_names,
        bos_token_id=metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=metadata.get("tokenizer.ggml.eos_token_id"),
        pad_token_id=metadata.get("tokenizer.ggml.padding_token_id"),
    )
    if fields["vocab_size"] is None:
        raise ModelLoadError(f"{path} states no vocabulary size nor tokens; re-convert it with llama.cpp")
    if model_type in ("llama", "qwen3"):  # Qwen2 always has q/k/v biases, Mistral none
        fields["attention_bias"] = "blk.0.attn_q.bias" in tensor_names
    if model_type == "llama":
        fields["mlp_bias"] = "blk.0.ffn_gate.bias" in tensor_names
    if (window := key("attention.sliding_window")) and model_type == "mistral":
        fields["sliding_window"] = window
    if arch in ("gemma2", "gemma3"):
        fields |= gemma_fields(arch, key, fields)
    return model_config(model_type, fields)


def gemma_fields(arch: str, key, fields: dict) -> dict:
    """What llama.cpp's Gemma graph takes from the metadata, or fixes, as HF config fields."""
    out = {}
    if window := key("attention.sliding_window"):
        out["sliding_window"] = int(window)
    # llama.cpp scales the scores by 1/sqrt(head_dim), except for the 27B models (46 layers for Gemma 2,
    # 62 for Gemma 3), whose query_pre_attn_scalar is hidden_size / heads
    big = fields["num_hidden_layers"] == (46 if arch == "gemma2" else 62)
    out["query_pre_attn_scalar"] = fields["hidden_size"] // fields["num_attention_heads"] if big else fields["head_dim"]
    # a per-layer pattern, where the converter writes one (True: sliding); else the config's default
    pattern = key("attention.sliding_window_pattern")
    if isinstance(pattern, (list, tuple)) and len(pattern) == fields["num_hidden_layers"]:
        out["layer_types"] = ["sliding_attention" if p else "full_attention" for p in pattern]
    if arch == "gemma2":
        out["attn_logit_softcapping"] = key("attn_logit_softcapping")
        out["final_logit_softcapping"] = key("final_logit_softcapping")
    else:
        # the file states the global layers' base (and scaling); llama.cpp fixes the local layers' base
        out["rope_parameters"] = {
            "full_attention": fields["rope_parameters"],
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        }
    return out


def _rope(key, path: str, head_dim: int, rope_factors) -> dict:
    """transformers 5 `rope_parameters`: rope_type, rope_theta and the scaling fields."""
    theta = float(key("rope.freq_base", 10000.0))
    if rope_factors is not None:  # llama.cpp's default original context, as its converter assumes
        return llama3_rope(rope_factors, theta, head_dim, key("rope.scaling.original_context_length", 8192), path)
    rope = {"rope_type": "default", "rope_theta": theta}
    kind = key("rope.scaling.type")
    factor = key("rope.scaling.factor") or key("rope.scale_linear")  # the latter is the pre-2024 key
    if kind in (None, "none") and factor and factor != 1.0:
        kind = "linear"
    if kind in (None, "none"):
        return rope
    if kind == "linear":
        return rope | {"rope_type": "linear", "factor": float(factor)}
    if kind == "yarn":
        rope |= {"rope_type": "yarn", "factor": float(factor)}
        if orig := key("rope.scaling.original_context_length"):
            rope["original_max_position_embeddings"] = int(orig)
        for gguf_key, hf_key in (("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if (value := key(f"rope.scaling.{gguf_key}")) is not None:
                rope[hf_key] = float(value)
        return rope
    raise ModelLoadError(
        f"GGUF rope scaling type {kind!r} in {path} is not supported (only linear and yarn are); use a model without it"
    )
