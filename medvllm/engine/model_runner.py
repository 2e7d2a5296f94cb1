"""ModelRunner: owns the model and its KV cache, turns scheduled sequences into one forward pass."""

from __future__ import annotations

from collections.abc import Callable

import torch

from medvllm.backends.select import ModelTraits, select_backends
from medvllm.config import Config
from medvllm.engine.kv_cache import allocate_kv_cache, fitted_max_model_len, kv_groups
from medvllm.engine.memory_pool import keep_freed_memory, release_free_memory, step_buffer_bytes
from medvllm.engine.precision import backend_scope, engine_flags
from medvllm.engine.sequence import Sequence
from medvllm.engine.step_inputs import StepInputs, prepare_step, sampling_batch
from medvllm.errors import ConfigError
from medvllm.layers.sampler import Sampler
from medvllm.loader import ModelSource
from medvllm.models.loading import build_model
from medvllm.models.registry import model_class
from medvllm.quantization import describe as describe_quantization
from medvllm.structured.masks import MaskBuilder

CPU = torch.device("cpu")


class ModelRunner:
    def __init__(
        self,
        config: Config,
        source: ModelSource,
        max_model_len: int,
        tp=None,
        broadcast: Callable[[StepInputs], StepInputs] | None = None,
    ):
        """`tp` (a medvllm.distributed TensorParallel) makes this runner hold one rank's shard;
        `broadcast` sends each step's inputs, built on the CPU, to the other ranks and returns them on
        this rank's device."""
        self.config = config
        self.device = config.resolved_device
        self.dtype = config.torch_dtype
        self.block_size = config.kvcache_block_size
        self.broadcast = broadcast
        self.backend_flags = engine_flags(config, self.device)  # in force only during this engine's steps
        hf = source.hf_config
        if config.quantization_method == "gguf" and source.format != "gguf":
            raise ConfigError(
                f"quantization_method='gguf' runs a GGUF file's own blocks, but {source.path} is a "
                f"{source.format} model: pass a .gguf file, or use quantization_method='dynamic' or none"
            )
        traits = ModelTraits.of(hf, model_class(hf).arch_options(hf), 1 if tp is None else tp.size)
        self.backends = select_backends(config, traits)
        # the float weights a packed or quantized layer replaces go back to the OS as each layer loads
        trims = config.memory_efficient or config.quantization_method is not None
        self.model = build_model(
            source,
            max_model_len,
            self.dtype,
            self.device,
            self.backends.kit,
            tp=tp,
            release=release_free_memory if trims else None,
        )
        if trims:
            release_free_memory()
        self.quantization = describe_quantization(
            self.model, None if config.quantization_method is None else self.backends.linear
        )
        self.vocab_size = hf.vocab_size
        self.kv_cache, self.window_cache = allocate_kv_cache(
            self.model, config, config.kv_torch_dtype, self.device, max_model_len, tp
        )
        self.model.bind_kv_cache(self.kv_cache, self.window_cache)
        # the sliding-window layers' pool, where they have one: (blocks, window in tokens)
        self.window_pool = (
            None if self.window_cache is None else (self.window_cache.shape[2], kv_groups(self.model).window)
        )
        # what the decoder layers run: the fused layer is not built where a layer holds what it cannot run
        fused = getattr(self.model.model, "fused_layers", None) is not None
        self.decode_layer = "native" if fused else "torch"
        self.max_model_len = fitted_max_model_len(config, self.kv_cache, max_model_len)
        self.num_blocks = self.kv_cache[0].shape[1]
        generator = torch.Generator(device=self.device)
        generator.manual_seed(config.seed)
        argmax = self.backends.kit.argmax
        self.sampler = Sampler(generator) if argmax is None else Sampler(generator, argmax)
        self.masks: MaskBuilder | None = None  # structured outputs, made when a request first has a grammar
        # weights and KV cache in place: from here on, keep each step's work buffers for the next step
        self.keeps_freed_memory = self.device.type == "cpu" and keep_freed_memory(
            step_buffer_bytes(hf, config.max_num_batched_tokens)
        )

    @torch.inference_mode()
    def run(self, seqs: list[Sequence], is_prefill: bool):
        """One forward pass + sampling. Returns (token ids [S] list, logprobs [S, V] or None) for the S
        sequences that sample this step, in order (a prompt's inner chunk does not)."""
        with backend_scope(self.backend_flags):
            return self._run(seqs, is_prefill)

    def _run(self, seqs: list[Sequence], is_prefill: bool):
        step = self.prepare(seqs, is_prefill)
        sampling = [seqs[i] for i in step.sampling]
        masks = self._start_masks(sampling)  # computed on a thread while the model runs
        try:
            hidden = self.model(step.input_ids, step.positions, step.attn)
            if not step.sampling:  # only inner chunks of long prompts
                return [], None
            logits = self.model.compute_logits(hidden[step.logits_index])
            batch = sampling_batch(sampling, self.vocab_size, self.device)
            if masks is not None:
                batch.bitmask_rows, batch.token_bitmask = masks.result()
            tokens, logprobs = self.sampler(logits, batch)
            return tokens.tolist(), logprobs
        finally:
            if masks is not None:
                masks.cancel() or masks.exception()  # a failed step leaves no mask work behind on its matchers

    def _start_masks(self, sampling: list[Sequence]):
        """The structured-output masks of the sampling rows that have a grammar (None when none has)."""
        rows = [(i, s.grammar, s) for i, s in enumerate(sampling) if s.grammar is not None]
        if not rows:
            return None
        if self.masks is None:
            self.masks = MaskBuilder(self.vocab_size)
        return self.masks.start(rows)

    @torch.inference_mode()
    def score(self, token_ids: list[int], tables: tuple[list[int], list[int]] | None = None) -> torch.Tensor:
        """Logits [T, V] for every position of one sequence (teacher forcing), outside the scheduler.

        Writes its KV into `tables` (its block table and, with a window pool, its window table: LLMEngine.score
        takes them from the block manager); without them, into the top of the pools, which is only safe
        on an engine that never ran.
        """
        with backend_scope(self.backend_flags):
            return self._score(token_ids, tables)

    def _score(self, token_ids: list[int], tables: tuple[list[int], list[int]] | None) -> torch.Tensor:
        seq = Sequence("score", None, token_ids, _SCORE_PARAMS, self.block_size)
        if tables is None:
            n = seq.num_blocks
            top = self.window_pool[0] if self.window_pool else 0
            tables = list(range(self.num_blocks - n, self.num_blocks)), list(range(top - n, top)) if top else []
        seq.block_table, seq.window_table = tables
        step = self.prepare([seq], True, all_logits=True)
        hidden = self.model(step.input_ids, step.positions, step.attn)
        return self.model.compute_logits(hidden).float()

    def prepare(self, seqs: list[Sequence], is_prefill: bool, all_logits: bool = False) -> StepInputs:
        """The step's input tensors (sent to the other tensor-parallel ranks first, where there are some)."""
        if self.broadcast is None:
            return prepare_step(seqs, is_prefill, self.block_size, self.device, all_logits=all_logits)
        return self.broadcast(prepare_step(seqs, is_prefill, self.block_size, CPU, all_logits=all_logits))


from medvllm.sampling_params import SamplingParams  # noqa: E402  (after the classes that use it)

_SCORE_PARAMS = SamplingParams(temperature=0, max_tokens=1)
