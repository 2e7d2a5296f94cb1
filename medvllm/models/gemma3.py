"""Gemma 3 (text): the Gemma decoder with RMSNorm on q and k, local and global RoPE, no soft-capping."""

from medvllm.models.gemma import GemmaForCausalLM, gemma_options
from medvllm.models.llama import ArchOptions


class Gemma3ForCausalLM(GemmaForCausalLM):
    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return gemma_options(cfg, qk_norm=True)
