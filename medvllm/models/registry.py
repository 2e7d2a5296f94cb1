"""Maps a Hugging Face `architectures` name to our implementation."""

from __future__ import annotations

from medvllm.errors import ModelLoadError
from medvllm.models.gemma2 import Gemma2ForCausalLM
from medvllm.models.gemma3 import Gemma3ForCausalLM
from medvllm.models.llama import LlamaForCausalLM
from medvllm.models.mistral import MistralForCausalLM
from medvllm.models.qwen2 import Qwen2ForCausalLM
from medvllm.models.qwen3 import Qwen3ForCausalLM

MODEL_REGISTRY = {
    "Gemma2ForCausalLM": Gemma2ForCausalLM,
    "Gemma3ForCausalLM": Gemma3ForCausalLM,
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
    "Qwen3ForCausalLM": Qwen3ForCausalLM,
}


def model_class(hf_config) -> type[LlamaForCausalLM]:
    names = list(getattr(hf_config, "architectures", None) or [])
    for name in names:
        if name in MODEL_REGISTRY:
            return MODEL_REGISTRY[name]
    raise ModelLoadError(
        f"architecture {names or '(none given)'} is not supported: use a model of one of {', '.join(MODEL_REGISTRY)}"
    )
