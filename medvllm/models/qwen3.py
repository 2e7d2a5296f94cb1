"""Qwen3: the Llama decoder with per-head RMSNorm on q and k (and an explicit head_dim)."""

from medvllm.models.llama import ArchOptions, LlamaForCausalLM
from medvllm.models.qwen2 import qwen_sliding_window


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return ArchOptions(qk_norm=True, sliding_window=qwen_sliding_window(cfg))
