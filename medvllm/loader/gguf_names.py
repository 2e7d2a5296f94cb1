"""GGUF tensor names <-> Hugging Face parameter names for the Llama and Gemma families (llama.cpp's naming)."""

import re

_TOP = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
_BLOCK = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# Gemma's four norms per block: llama.cpp's ffn_norm is the norm before the MLP, as in Llama, but Gemma
# calls it pre_feedforward_layernorm and has a norm after each sublayer too
_GEMMA_BLOCK = _BLOCK | {
    "ffn_norm": "pre_feedforward_layernorm",
    "post_attention_norm": "post_attention_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GEMMA_ARCHS = ("gemma2", "gemma3")
_TOP_HF = {v: k for k, v in _TOP.items()}
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


def _block(arch: str | None) -> dict:
    return _GEMMA_BLOCK if arch in GEMMA_ARCHS else _BLOCK


def hf_name(gguf_name: str, arch: str | None = None) -> str | None:
    """The HF parameter name for a GGUF tensor name of a file of llama.cpp architecture `arch`, or None if
    it is not one of that family's weights."""
    if m := _GGUF_BLOCK.fullmatch(gguf_name):
        part = _block(arch).get(m[2])
        return part and f"model.layers.{m[1]}.{part}.{m[3]}"
    base, _, kind = gguf_name.rpartition(".")
    part = _TOP.get(base)
    return part and kind in ("weight", "bias") and f"{part}.{kind}" or None


def gguf_name(hf: str, arch: str | None = None) -> str:
    """The inverse of hf_name, for error messages that name what the file should hold."""
    if m := _HF_BLOCK.fullmatch(hf):
        block_hf = {v: k for k, v in _block(arch).items()}
        return f"blk.{m[1]}.{block_hf.get(m[2], m[2])}.{m[3]}"
    base, _, kind = hf.rpartition(".")
    return f"{_TOP_HF.get(base, base)}.{kind}"
