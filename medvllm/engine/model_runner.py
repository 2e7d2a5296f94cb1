"""ModelRunner: owns the model and its KV cache, turns scheduled sequences into one forward pass."""
from __future__ import annotations

import torch

from medvllm.config import Config
from medvllm.layers.cpu_decode_layer import use_fused_decode
from medvllm.engine.kv_cache import allocate_kv_cache, fitted_max_model_len
from medvllm.engine.sequence import Sequence
from medvllm.engine.step_inputs import prepare_step, sampling_batch
from medvllm.errors import ModelLoadError
from medvllm.layers.sampler import Sampler
from medvllm.loader import ModelSource
from medvllm.models.registry import model_class
from medvllm.models.weights import load_weights
from medvllm.engine.memory_pool import keep_freed_memory, release_free_memory, step_buffer_bytes
from medvllm.engine.precision import apply_backend_flags, keep_logits_float32
from medvllm.layers.cpu_linear import pack_float_linears
from medvllm.layers.cpu_panel_linear import use_float_panels
from medvllm.layers.attention_backends import install as install_attention, select_backend
from medvllm.layers.norm import use_native_norms
from medvllm.quantization import describe as describe_quantization
from medvllm.quantization import linear_method, quantize_embedding, quantize_model, quantize_while_loading


class ModelRunner:
    def __init__(self, config: Config, source: ModelSource, max_model_len: int, tp=None):
        """`tp` (a medvllm.distributed TensorParallel) makes this runner hold one rank's shard."""
        self.config = config
        self.device = config.resolved_device
        self.dtype = config.torch_dtype
        self.block_size = config.kvcache_block_size
        self.backend_flags = apply_backend_flags(config, self.device)
        self.quant_method = linear_method(config)
        self.model = build_model(source, max_model_len, self.dtype, self.device, self.quant_method, tp=tp)
        # the float weights freed by quantization, or by a memory-efficient load, go back to the OS
        release_freed = config.memory_efficient or self.quant_method is not None
        if release_freed:
            release_free_memory()
        keep_logits_float32(self.model, self.dtype)
        embedding_int8 = quantize_embedding(self.model, self.quant_method)  # the head too, where it can
        if self.device.type == "cpu" and not use_float_panels(self.model, self.dtype):
            pack_float_linears(self.model, self.dtype)  # float32 layers left in float: panels, or oneDNN's
        self.quantization = describe_quantization(self.model, self.quant_method, embedding_int8)
        if embedding_int8 and release_freed:
            release_free_memory()
        self.attention_backend = select_backend(config, self.device, self.dtype, _has_sliding_window(self.model))
        install_attention(self.model, self.attention_backend)
        self.rms_norm = use_native_norms(self.model, self.device, self.dtype)
        self.vocab_size = source.hf_config.vocab_size
        if tp is not None:  # every rank must size its pool to the same number of blocks
            from medvllm.distributed.kv_blocks import agree_on_kv_blocks
            config = agree_on_kv_blocks(config, self.model, config.kv_torch_dtype, self.device, tp, max_model_len)
        self.kv_cache = allocate_kv_cache(self.model, config, config.kv_torch_dtype, self.device, max_model_len)
        self.max_model_len = fitted_max_model_len(config, self.kv_cache, max_model_len)
        self.num_blocks = self.kv_cache[0].shape[1]
        self.decode_layer = use_fused_decode(self.model, self.device, self.dtype)  # needs the KV cache in place
        generator = torch.Generator(device=self.device)
        generator.manual_seed(config.seed)
        self.sampler = Sampler(generator)
        # weights and KV cache in place: from here on, keep each step's work buffers for the next step
        self.keeps_freed_memory = self.device.type == "cpu" and keep_freed_memory(
            step_buffer_bytes(source.hf_config, config.max_num_batched_tokens))

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool):
        """One forward pass + sampling. Returns (token ids [S] list, logprobs [S, V] or None) for the S
        sequences that sample this step, in order (a prompt's inner chunk does not)."""
        step = self.prepare(seqs, is_prefill)
        hidden = self.model(step.input_ids, step.positions, step.attn)
        if not step.sampling:  # only inner chunks of long prompts
            return [], None
        logits = self.model.compute_logits(hidden[step.logits_index])
        sampling = [seqs[i] for i in step.sampling]
        tokens, logprobs = self.sampler(logits, sampling_batch(sampling, self.vocab_size, self.device))
        return tokens.tolist(), logprobs

    @torch.inference_mode()
    def score(self, token_ids: list[int], block_table: list[int] | None = None) -> torch.Tensor:
        """Logits [T, V] for every position of one sequence (teacher forcing), outside the scheduler.

        Writes its KV into `block_table` (LLMEngine.score takes them from the block manager);
        without one, into the top of the pool, which is only safe on an engine that never ran.
        """
        seq = Sequence("score", None, token_ids, _SCORE_PARAMS, self.block_size)
        seq.block_table = block_table or list(range(self.num_blocks - seq.num_blocks, self.num_blocks))
        step = self.prepare([seq], True, all_logits=True)
        hidden = self.model(step.input_ids, step.positions, step.attn)
        return self.model.compute_logits(hidden).float()

    def prepare(self, seqs: list[Sequence], is_prefill: bool, all_logits: bool = False):
        """The step's input tensors (the tensor-parallel runner also sends them to its workers here)."""
        return prepare_step(seqs, is_prefill, self.block_size, self.device, all_logits=all_logits)


def build_model(source: ModelSource, max_model_len: int, dtype: torch.dtype, device: torch.device,
                quant_method=None, tp=None):
    cls = model_class(source.hf_config)
    with torch.device("meta"):
        model = cls(source.hf_config, max_model_len, tp=tp)
    model = model.to(dtype).to_empty(device=device)  # cast while empty: the weights never exist twice
    if model.tie_word_embeddings:  # to_empty unties shared parameters
        model.lm_head.weight = model.model.embed_tokens.weight
    if device.type != "cpu":
        model.model.layers[0].self_attn.rotary.move_to(device)  # one table, shared by all layers
    weights = source.iter_weights()
    if quant_method is not None:  # each layer is quantized (its float weight freed) as soon as it is loaded
        weights = quantize_while_loading(model, weights, quant_method)
    load_weights(model, weights)
    if quant_method is not None:
        quantize_model(model, quant_method)
    return model.eval()


def _has_sliding_window(model) -> bool:
    return any(getattr(m, "sliding_window", None) is not None for m in model.modules())


from medvllm.sampling_params import SamplingParams  # noqa: E402  (after the classes that use it)

_SCORE_PARAMS = SamplingParams(temperature=0, max_tokens=1)
