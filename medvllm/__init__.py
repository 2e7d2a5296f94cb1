"""Med-vLLM: an inference engine for medical LLMs on CPU and GPU."""

from medvllm.config import Config
from medvllm.llm import LLM
from medvllm.outputs import CompletionOutput, RequestOutput
from medvllm.sampling_params import SamplingParams

__all__ = ["LLM", "Config", "SamplingParams", "RequestOutput", "CompletionOutput"]
__version__ = "0.1.0"
