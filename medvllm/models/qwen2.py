"""Qwen2: the Llama decoder with a bias on the q/k/v projection."""

from medvllm.errors import ModelLoadError
from medvllm.models.llama import ArchOptions, LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return ArchOptions(qkv_bias=True, sliding_window=qwen_sliding_window(cfg))


def qwen_sliding_window(cfg) -> int | None:
    """Qwen configs carry a window but apply it only when use_sliding_window is set."""
    if not getattr(cfg, "use_sliding_window", False):
        return None
    layer_types = getattr(cfg, "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        raise ModelLoadError(
            "Qwen models mixing sliding and full attention layers are not supported: "
            "use a checkpoint with use_sliding_window=false"
        )
    return getattr(cfg, "sliding_window", None)
