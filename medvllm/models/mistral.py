"""Mistral: the Llama decoder with sliding-window attention."""

from medvllm.models.llama import ArchOptions, LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return ArchOptions(sliding_window=getattr(cfg, "sliding_window", None))
