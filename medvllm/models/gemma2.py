"""Gemma 2: the Gemma decoder with soft-capped attention scores and final logits."""

from medvllm.models.gemma import GemmaForCausalLM, gemma_options
from medvllm.models.llama import ArchOptions


class Gemma2ForCausalLM(GemmaForCausalLM):
    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return gemma_options(cfg, qk_norm=False)
