"""The parameter names each supported architecture's *ForCausalLM expects.

Both formats check their tensors against this list at open time, so a missing tensor is reported
before the engine allocates anything, naming the tensor.
"""

from medvllm.errors import ModelLoadError

# architectures (HF class names) the loader knows how to complete-check
SUPPORTED_ARCHITECTURES = (
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "Gemma2ForCausalLM",
    "Gemma3ForCausalLM",
)
GEMMA = ("Gemma2ForCausalLM", "Gemma3ForCausalLM")  # four norms per block


def expected_names(config) -> list[str]:
    """Every parameter name of the model `config` describes, in state_dict order."""
    arch = config.architectures[0]
    # Qwen2 always has q/k/v biases and no o bias; Llama and Qwen3 put one flag on all four.
    attn_bias = getattr(config, "attention_bias", False)
    qkv_bias = arch == "Qwen2ForCausalLM" or attn_bias
    o_bias = attn_bias and arch != "Qwen2ForCausalLM"
    mlp_bias = getattr(config, "mlp_bias", False)

    names = ["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        p = f"model.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(f"{p}self_attn.{proj}.weight")
            if qkv_bias:
                names.append(f"{p}self_attn.{proj}.bias")
        names.append(f"{p}self_attn.o_proj.weight")
        if o_bias:
            names.append(f"{p}self_attn.o_proj.bias")
        if arch in ("Qwen3ForCausalLM", "Gemma3ForCausalLM"):
            names += [f"{p}self_attn.q_norm.weight", f"{p}self_attn.k_norm.weight"]
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names.append(f"{p}mlp.{proj}.weight")
            if mlp_bias:
                names.append(f"{p}mlp.{proj}.bias")
        names += [f"{p}input_layernorm.weight", f"{p}post_attention_layernorm.weight"]
        if arch in GEMMA:
            names += [f"{p}pre_feedforward_layernorm.weight", f"{p}post_feedforward_layernorm.weight"]
    names.append("model.norm.weight")
    if not config.tie_word_embeddings:
        names.append("lm_head.weight")
    return names


def expected_shape(config, name: str) -> tuple[int, ...]:
    """The shape transformers gives parameter `name` of the model `config` describes."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    hidden, inter = config.hidden_size, config.intermediate_size
    q, kv = config.num_attention_heads * head_dim, config.num_key_value_heads * head_dim
    base, kind = name.rsplit(".", 1)
    out, into = {  # (output features, input features) of each kind of parameter
        "embed_tokens": (config.vocab_size, hidden),
        "lm_head": (config.vocab_size, hidden),
        "q_proj": (q, hidden),
        "k_proj": (kv, hidden),
        "v_proj": (kv, hidden),
        "o_proj": (hidden, q),
        "gate_proj": (inter, hidden),
        "up_proj": (inter, hidden),
        "down_proj": (hidden, inter),
        "q_norm": (head_dim, None),
        "k_norm": (head_dim, None),
    }.get(base.rsplit(".", 1)[-1], (hidden, None))  # the rest are hidden-sized norms
    return (out, into) if kind == "weight" and into else (out,)


def check_complete(config, shapes: dict[str, tuple[int, ...]], where: str, stored_as=lambda name: name) -> None:
    """Raise ModelLoadError naming the first expected tensor `shapes` lacks or holds in the wrong shape.

    `shapes` maps HF names to stored shapes; `stored_as` turns an HF name into the file's own name,
    so the message names what to look for.
    """
    for name in expected_names(config):
        if name not in shapes:
            raise ModelLoadError(
                f"tensor {stored_as(name)!r} (for {name}) is missing from {where}; a "
                f"{config.architectures[0]} with {config.num_hidden_layers} layers needs it: the file is "
                f"incomplete or its config does not match its weights, re-download or re-convert it"
            )
        if tuple(shapes[name]) != (want := expected_shape(config, name)):
            raise ModelLoadError(
                f"tensor {stored_as(name)!r} (for {name}) in {where} has shape {tuple(shapes[name])}, but its "
                f"config implies {want}; the config does not match the weights, re-download or re-convert it"
            )
