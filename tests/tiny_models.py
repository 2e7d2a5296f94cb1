"""Tiny random Hugging Face models of every supported architecture, saved to a folder for the tests."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

VOCAB = 256
BASE = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=1,
)

# name -> (config class, extra settings)
ARCHS = {
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=True, rope_theta=10000.0)),
    "llama3_rope_untied": (
        transformers.LlamaConfig,
        dict(
            tie_word_embeddings=False,
            rope_theta=500000.0,
            rope_scaling=dict(
                rope_type="llama3",
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=64,
            ),
        ),
    ),
    "llama_linear_rope": (
        transformers.LlamaConfig,
        dict(tie_word_embeddings=False, rope_scaling=dict(rope_type="linear", factor=2.0)),
    ),
    "mistral": (transformers.MistralConfig, dict(sliding_window=12, tie_word_embeddings=False)),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32, tie_word_embeddings=False)),
}


# Gemma: a window shorter than the test prompts, layer patterns with local and global layers, odd head
# counts, GQA and MQA, separate local/global RoPE (the global one scaled), soft-capping (Gemma 2)
GEMMA_ARCHS = {
    "gemma3": (
        transformers.Gemma3TextConfig,
        dict(
            head_dim=32,
            query_pre_attn_scalar=24,
            sliding_window=12,
            num_hidden_layers=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0},
            },
        ),
    ),
    "gemma3_mqa_odd_heads": (
        transformers.Gemma3TextConfig,
        dict(
            hidden_size=48,
            num_attention_heads=3,
            num_key_value_heads=1,
            head_dim=16,
            query_pre_attn_scalar=16,
            sliding_window=7,
            num_hidden_layers=3,
            sliding_window_pattern=3,  # local, local, global
        ),
    ),
    "gemma2": (
        transformers.Gemma2Config,
        dict(
            head_dim=16,
            query_pre_attn_scalar=20,
            sliding_window=12,
            num_hidden_layers=3,
            attn_logit_softcapping=2.0,  # small enough for the tiny model's scores to reach the cap
            final_logit_softcapping=3.0,
        ),
    ),
}


def tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w2"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="w0", eos_token="w1", unk_token="w2", pad_token="w1"
    )


def build_tiny(arch: str, folder: Path, seed: int = 0) -> transformers.PreTrainedModel:
    """Builds, saves (sharded, to exercise the index) and returns a float32 random model."""
    gemma = arch in GEMMA_ARCHS
    cls, extra = GEMMA_ARCHS[arch] if gemma else ARCHS[arch]
    config = cls(**(BASE | extra))
    torch.manual_seed(seed)
    # transformers' SDPA path has no soft-capping: its eager attention is the reference there
    kwargs = {"attn_implementation": "eager"} if gemma else {}
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32, **kwargs)
    with torch.no_grad():  # random init is tiny; widen it so logits differ clearly between tokens
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0, 0.08)
            elif gemma and "norm" in name:  # Gemma's norms start at 0 (a scale of 1): exercise (1 + w)
                p.normal_(0, 0.2)
    model.eval()
    model.save_pretrained(folder, max_shard_size="200KB")
    tiny_tokenizer().save_pretrained(folder)
    return model


def random_prompts(lengths, seed):
    """Token-id prompts of the given lengths, reproducible from `seed` (ids 3..255: no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in lengths]
