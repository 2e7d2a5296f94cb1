"""A GGUF model's light config against transformers' own config class, attribute by attribute."""

import pytest
import transformers

from medvllm.loader.model_config import DEFAULTS, model_config

STATED = dict(  # what every GGUF file states
    vocab_size=100,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=12,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=None,
)
GEMMA3_ROPE = {
    "full_attention": {"rope_type": "linear", "rope_theta": 1e6, "factor": 8.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
}
CASES = [
    ("llama", {}),
    ("llama", dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=True)),
    ("mistral", {}),
    ("mistral", dict(sliding_window=64)),
    ("qwen2", {}),
    ("qwen3", dict(attention_bias=True)),
    ("gemma2", dict(query_pre_attn_scalar=16, attn_logit_softcapping=None, final_logit_softcapping=None)),
    ("gemma2", dict(query_pre_attn_scalar=16, sliding_window=32, attn_logit_softcapping=30.0)),
    ("gemma3_text", dict(query_pre_attn_scalar=16, rope_parameters=GEMMA3_ROPE)),
    ("gemma3_text", dict(sliding_window=32, layer_types=["full_attention", "sliding_attention"] * 6)),
]


@pytest.mark.parametrize("model_type,extra", CASES)
def test_same_attributes_as_transformers(model_type, extra):
    fields = STATED | extra
    ours = model_config(model_type, fields)
    theirs = transformers.AutoConfig.for_model(model_type, **fields)
    for name, value in ours.to_dict().items():
        assert value == getattr(theirs, name), name


def test_every_model_type_has_defaults():
    from medvllm.loader.gguf_config import GGUF_ARCHITECTURES

    assert {model_type for model_type, _ in GGUF_ARCHITECTURES.values()} == set(DEFAULTS)
