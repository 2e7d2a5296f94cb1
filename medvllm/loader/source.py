"""ModelSource: what the loader hands the engine, whatever the file format."""

from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    import transformers

    from medvllm.loader.model_config import ModelConfig
    from medvllm.loader.text_tokenizer import TextTokenizer


@dataclass
class ModelSource:
    path: str  # the file or folder loaded
    format: str  # "gguf" | "safetensors"
    hf_config: "transformers.PretrainedConfig | ModelConfig"  # .architectures: the *ForCausalLM class
    # a GGUF file's: TextTokenizer; a folder's: transformers' fast tokenizer. .chat_template set when the model has one.
    # A Future while it is still being built (a GGUF file's, beside the weights): read it as `tokenizer`.
    _tokenizer: "TextTokenizer | transformers.PreTrainedTokenizerBase | Future"
    description: str  # short human text for logs and output metadata
    # Builds the weight stream; kept as a factory so every iter_weights() call starts afresh.
    _weights: Callable[..., Iterator[tuple[str, "torch.Tensor"]]] = field(repr=False, compare=False, default=None)

    @property
    def tokenizer(self) -> "TextTokenizer | transformers.PreTrainedTokenizerBase":
        """The tokenizer, once built (waits for it; raises what building it raised)."""
        if isinstance(self._tokenizer, Future):
            self._tokenizer = self._tokenizer.result()
        return self._tokenizer

    def iter_weights(self, blocks: bool = False) -> Iterator[tuple[str, "torch.Tensor"]]:
        """Yield (Hugging Face parameter name, CPU tensor) one at a time, so peak memory stays low.

        Names are those of transformers' *ForCausalLM state_dict; "lm_head.weight" is absent when the
        embeddings are tied. Safetensors tensors keep their stored dtype; GGUF tensors are float32, or
        with `blocks` (GGUF only) every matrix is a BlockTensor: the file's own blocks.
        """
        if blocks:
            if self.format != "gguf":
                raise ValueError(f"{self.path} is a {self.format} model: only a GGUF file holds quantized blocks")
            return self._weights(blocks=True)
        return self._weights()
