"""LLM: the offline Python API, shaped like vLLM's `LLM(model).generate(prompts, params)`."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence as Seq

from medvllm.chat_template import encode_chat
from medvllm.config import Config
from medvllm.engine.llm_engine import LLMEngine
from medvllm.errors import RequestError
from medvllm.outputs import RequestOutput
from medvllm.sampling_params import SamplingParams

Prompt = str | list[int] | dict  # text, token ids, or vLLM's {"prompt": ...} / {"prompt_token_ids": ...}
Messages = list[dict]


class LLM:
    """`LLM(model=None, **config)`: model None is the embedded default model.

    Settings come from keyword arguments: Config fields, or the keys profiles use (enable_mixed_precision,
    quantization_bits, ...), translated the same way. `deployment_profile=NAME|PATH` applies a profile
    under them, with the same precedence as the CLI; without it no profile is applied. The Config is
    checked against this machine (hardware.detect()).
    """

    def __init__(
        self, model: str | None = None, *, config: Config | None = None, deployment_profile: str | None = None, **kwargs
    ):
        if config is None:
            config = _resolve(model, deployment_profile, kwargs)
        self.config = config
        self.engine = LLMEngine(config)
        self.tokenizer = self.engine.tokenizer

    def get_tokenizer(self):
        """The model's tokenizer: a GGUF file's is a TextTokenizer (encode, decode, apply_chat_template, special
        tokens; any other transformers method through a PreTrainedTokenizerFast built when first asked for),
        a folder's is transformers' fast tokenizer."""
        return self.tokenizer

    def runtime_info(self) -> dict:
        """What actually ran: recorded in outputs' metadata so a result can be traced to its numerics."""
        runner = self.engine.runner
        backends = runner.backends
        return {
            "model": self.engine.source.description,
            "architecture": type(runner.model).__name__,
            "device": str(runner.device),
            "dtype": str(runner.dtype).replace("torch.", ""),
            "attention_backend": backends.attention,
            "rms_norm": backends.norm,  # "native": the C kernel of backends/cpu/native/fused_norm.c
            "quantization": runner.quantization,
            "lm_head": backends.lm_head,  # "float32-logits" under mixed precision
            "linear": backends.linear,
            # allow_tf32, cudnn_benchmark as this engine asked: in force during its steps only; None on CPU
            **runner.backend_flags,
            "max_model_len": self.engine.max_model_len,
            "kv_cache_blocks": runner.num_blocks,
            # the sliding-window layers' own pool (Gemma 2/3): its blocks and the window; None without one
            "kv_window_pool": None
            if runner.window_pool is None
            else {"blocks": runner.window_pool[0] - 1, "window": runner.window_pool[1]},
            "kv_cache_dtype": str(runner.kv_cache.dtype).replace("torch.", ""),
            "kv_block_size": self.config.kvcache_block_size,
            "tensor_parallel_size": self.config.tensor_parallel_size,
            "memory_pool": self.config.enable_memory_pooling,  # KV cache committed at start (engine/memory_pool.py)
            "decode_layer": runner.decode_layer,  # "native": one C call per layer (decode, short prompts)
            "backend_reasons": dict(backends.reasons),  # why each part runs what it runs
            "keeps_freed_memory": runner.keeps_freed_memory,  # CPU: glibc reuses work buffers (same file)
        }

    def reset_prefix_cache(self) -> bool:
        """Forget every cached prompt prefix (as vLLM's LLM.reset_prefix_cache); False while requests run."""
        return self.engine.reset_prefix_cache()

    def close(self) -> None:
        """Stops tensor-parallel worker processes, if any; the LLM is unusable afterwards."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- generation
    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        priority: Seq[int] | None = None,
    ) -> list[RequestOutput]:
        """One final output per prompt, in order. A prompt is text, token ids, or a vLLM prompt dict
        ({"prompt": text} or {"prompt_token_ids": ids}, with an optional "cache_salt"). Raises RequestError
        for a bad prompt and StepError when a step running one of them fails; either way none of this
        call's requests is left in the engine. `priority` (vLLM's): one per prompt, used under
        scheduling_policy='priority' (lower is more urgent)."""
        prompts = _as_list(prompts)
        params = _params_for(prompts, sampling_params)
        if priority is not None and len(priority) != len(prompts):
            raise RequestError(f"priority has {len(priority)} values for {len(prompts)} prompts: give one per prompt")
        priorities = [0] * len(prompts) if priority is None else list(priority)
        ids: list[str] = []
        finals: dict[str, RequestOutput] = {}
        try:
            for p, sp, rank in zip(prompts, params, priorities):
                ids.append(self.engine.add_request(p, sp, priority=rank))
            while len(finals) < len(ids) and self.engine.has_unfinished_requests():
                for out in self.engine.step():
                    if out.error is not None and out.request_id in ids:
                        raise out.error
                    if out.finished:
                        finals[out.request_id] = out
        finally:
            for request_id in ids:  # only after an error: the rest of this call's requests stop here
                if request_id not in finals:
                    self.engine.abort_request(request_id)
        return [finals[i] for i in ids]

    def chat(
        self, messages: Messages | list[Messages], sampling_params: SamplingParams | Seq[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        conversations = [messages] if messages and isinstance(messages[0], dict) else messages
        return self.generate([self.encode_chat(m) for m in conversations], sampling_params)

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[RequestOutput]:
        """Yields an output each time the request gets a token; `.outputs[0].delta_text` is the new text."""
        request_id = self.engine.add_request(prompt, sampling_params, stream=True)
        try:
            while True:
                for out in self.engine.step():
                    if out.request_id == request_id:
                        if out.error is not None:
                            raise out.error
                        yield out
                        if out.finished:
                            return
        finally:
            self.engine.abort_request(request_id)

    def encode_chat(self, messages: Messages) -> list[int]:
        """Token ids of a conversation through the model's own chat template, ready for the reply."""
        return encode_chat(self.tokenizer, messages)


def _as_list(prompts) -> list[Prompt]:
    """One prompt (text, token ids, a dict) or a list of them; anything else goes on as one prompt, for
    add_request to refuse with a RequestError."""
    if isinstance(prompts, (list, tuple)) and not (prompts and isinstance(prompts[0], int)):
        return list(prompts)
    return [prompts]


def _params_for(prompts: list, params) -> list[SamplingParams]:
    if params is None:
        return [SamplingParams()] * len(prompts)
    if isinstance(params, SamplingParams):
        return [params] * len(prompts)
    if len(params) != len(prompts):
        from medvllm.errors import RequestError

        raise RequestError(f"got {len(params)} SamplingParams for {len(prompts)} prompts: give one, or one each")
    return list(params)


def _resolve(model, profile, kwargs) -> Config:
    """The Config for `LLM(model, **kwargs)`: no profile unless one is named (the environment's is not read)."""
    import warnings

    from medvllm.config import ConfigWarning
    from medvllm.deployment import resolve
    from medvllm.deployment.model_info import model_info_for
    from medvllm.hardware import detect

    overrides = dict(kwargs, **({"model": model} if model is not None else {}))
    # the model's sizes and format take part in auto-selection, as the CLI's do
    info = model_info_for(model) if profile == "auto" else None
    config = resolve(overrides, "none" if profile is None else profile, os.environ, detect(), info).config
    for message in config.warnings:  # as a Config built directly would warn
        warnings.warn(message, ConfigWarning, stacklevel=3)
    return config
