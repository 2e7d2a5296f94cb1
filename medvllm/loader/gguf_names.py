"""GGUF tensor names <-> Hugging Face parameter names for the Llama family (llama.cpp's naming)."""

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
_TOP_HF = {v: k for k, v in _TOP.items()}
_BLOCK_HF = {v: k for k, v in _BLOCK.items()}
_GGUF_BLOCK = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")


def hf_name(gguf_name: str) -> str | None:
    """The HF parameter name for a GGUF tensor name, or None if it is not a Llama-family weight."""
    if m := _GGUF_BLOCK.fullmatch(gguf_name):
        part = _BLOCK.get(m[2])
        return part and f"model.layers.{m[1]}.{part}.{m[3]}"
    base, _, kind = gguf_name.rpartition(".")
    part = _TOP.get(base)
    return part and kind in ("weight", "bias") and f"{part}.{kind}" or None


def gguf_name(hf: str) -> str:
    """The inverse of hf_name, for error messages that name what the file should hold."""
    if m := _HF_BLOCK.fullmatch(hf):
        return f"blk.{m[1]}.{_BLOCK_HF.get(m[2], m[2])}.{m[3]}"
    base, _, kind = hf.rpartition(".")
    return f"{_TOP_HF.get(base, base)}.{kind}"
