"""LLMEngine: add requests, step the batch, get outputs. The offline LLM and the server both drive it."""

from __future__ import annotations

import gc
import itertools
import time

from medvllm.config import Config
from medvllm.engine.executor import make_executor
from medvllm.engine.memory_pool import release_free_memory
from medvllm.engine.output_processor import OutputProcessor
from medvllm.engine.prompts import parse_prompt
from medvllm.engine.scheduler import Scheduler
from medvllm.engine.sequence import Sequence
from medvllm.engine.step_inputs import samples, step_end
from medvllm.errors import EngineGoneError, RequestError, StepError
from medvllm.loader import ModelSource, open_model
from medvllm.outputs import RequestOutput
from medvllm.sampling_params import SamplingParams
from medvllm.structured.compiler import Grammars


class LLMEngine:
    def __init__(self, config: Config, source: ModelSource | None = None):
        self.config = config
        self.source = source or open_model(config.model)
        hf = self.source.hf_config
        # prompts longer than max_num_batched_tokens are prefilled in chunks (scheduler.py)
        self.max_model_len = config.max_model_len or getattr(hf, "max_position_embeddings", 4096) or 4096
        self.executor = make_executor(config, self.source, self.max_model_len)  # the tokenizer may build meanwhile
        self.tokenizer = self.source.tokenizer
        self.runner = self.executor.runner  # rank 0's: what runs, for runtime_info and stats
        self.max_model_len = self.runner.max_model_len  # lowered to the KV pool where that is smaller
        self.scheduler = Scheduler(config, self.runner.num_blocks, self.max_model_len, self.runner.window_pool)
        eos = eos_token_ids(hf, self.tokenizer)
        self.outputs = OutputProcessor(self.tokenizer, eos, self.max_model_len)
        self.grammars = Grammars(self.tokenizer, self.runner.vocab_size, eos)  # structured outputs
        self._ids = itertools.count()
        self._seqs: dict[str, Sequence] = {}
        self.num_generated_tokens = 0
        self._gone: BaseException | None = None  # set when a step finds the engine cannot go on
        if config.tensor_parallel_size == 1:
            # everything built so far lives as long as the engine: out of the collector's way, so its
            # full passes during generation walk only what steps create. Not with tensor parallelism:
            # frozen, its process group is finalized out of order at exit and under torchrun the process
            # often aborted there.
            gc.freeze()

    # ---- requests
    def add_request(
        self,
        prompt: str | list[int] | dict,
        params: SamplingParams | None = None,
        request_id: str | None = None,
        stream: bool = False,
        arrival_time: float | None = None,
        priority: int = 0,
    ) -> str:
        """Queues one request. `prompt`: text, token ids, or vLLM's {"prompt": text} / {"prompt_token_ids":
        ids} (either with an optional "cache_salt"). `priority` (vLLM's): under scheduling_policy='priority'
        a lower value is scheduled sooner and preempted later; fcfs ignores it. A RequestError leaves
        nothing queued."""
        if self._gone is not None:
            raise self._gone
        params = SamplingParams() if params is None else params
        if not isinstance(params, SamplingParams):
            raise RequestError(
                f"params of type {type(params).__name__} is not a SamplingParams: pass SamplingParams(...)"
            )
        request_id = request_id if request_id is not None else str(next(self._ids))
        if request_id in self._seqs:
            raise RequestError(f"request_id {request_id!r} is already in use: give each request its own id")
        if not isinstance(priority, int) or isinstance(priority, bool):
            raise RequestError(f"priority={priority!r} is invalid: it must be an integer (lower runs first)")
        parsed = parse_prompt(prompt, self.tokenizer, self.runner.vocab_size)
        token_ids = parsed.token_ids
        self._check_length(len(token_ids), params)
        so = params.structured_outputs
        grammar = None if so is None else self.grammars.state_for(so)  # a bad constraint: refused here
        seq = Sequence(
            request_id,
            parsed.text,
            token_ids,
            params,
            self.config.kvcache_block_size,
            arrival_time,
            cache_salt=parsed.cache_salt,
            priority=priority,
        )
        seq.stream = stream
        seq.grammar = grammar
        self._seqs[request_id] = seq
        self.scheduler.add(seq)
        return request_id

    def _check_length(self, n: int, params: SamplingParams) -> None:
        if n == 0:
            raise RequestError("the prompt is empty: give at least one token")
        total = n + (params.max_tokens or 0)
        if total > self.max_model_len:
            raise RequestError(
                f"prompt ({n} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds max_model_len="
                f"{self.max_model_len}: shorten the prompt or lower max_tokens"
            )
        limit = self.runner.num_blocks * self.config.kvcache_block_size
        if max(total, n + 1) > limit:
            raise RequestError(
                f"the request needs {total} tokens of KV cache but the pool holds {limit}: "
                "lower max_tokens or raise the KV cache size"
            )

    def abort_request(self, request_id: str) -> None:
        seq = self.scheduler.abort(request_id)
        if seq is not None:
            seq.finish_reason = "abort"
            self._seqs.pop(request_id, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    # ---- stepping
    def step(self) -> list[RequestOutput]:
        """Runs one batch; returns an output for every request that got a token this step.

        If running the batch raises, its requests finish with finish_reason "error" (the output's
        `error` says why) and the engine goes on serving the others; an interrupt (KeyboardInterrupt)
        or an EngineGoneError (a tensor-parallel rank died) is raised again once they are cleaned up."""
        if self._gone is not None:
            raise self._gone
        seqs, is_prefill = self.scheduler.schedule()
        if not seqs:
            return []
        now = time.time()
        for seq in seqs:
            if seq.metrics.first_scheduled_time is None:
                seq.metrics.first_scheduled_time = now
        try:
            tokens, logprobs = self.executor.run(seqs, is_prefill)
        except BaseException as e:
            failed = self._fail(seqs, e)
            if isinstance(e, EngineGoneError):
                self._gone = e  # every later call says so too
            if not isinstance(e, Exception) or isinstance(e, EngineGoneError):
                raise  # an interrupt, or an engine that cannot go on: its requests are cleaned up first
            return failed
        now = time.time()
        results = []
        sampling = [seq for seq in seqs if samples(seq, is_prefill)]
        for seq in seqs:  # a prompt's inner chunk only advances
            seq.num_computed_tokens = step_end(seq, is_prefill)
            seq.prefill_end = None
        for row, (seq, token) in enumerate(zip(sampling, tokens)):
            try:
                finished = self.outputs.append(seq, token, None if logprobs is None else logprobs[row], now)
                if finished:
                    self.scheduler.finish(seq)
                    self._seqs.pop(seq.request_id, None)
                results.append(self.outputs.make_output(seq, finished))
            except Exception as e:  # noqa: BLE001 - this request's output failed (detokenizing, ...): only it ends
                results.extend(self._fail([seq], e))
        self.num_generated_tokens += len(results)
        if not self._seqs and self.config.memory_efficient:
            # idle: hand the heap's free pages back, so a later batch of another shape does not add its
            # buffers on top of this one's leftovers
            release_free_memory()
        return results

    def _fail(self, seqs: list[Sequence], cause: BaseException) -> list[RequestOutput]:
        """Ends the requests of a step that raised: their blocks go back to the pool, minus the prefix-cache
        names of those the step never filled, and each gets a final output carrying a StepError."""
        bm = self.scheduler.block_manager
        reason = " ".join(f"{type(cause).__name__}: {cause}".split())  # one line
        outputs = []
        for seq in seqs:
            bm.forget_uncomputed(seq)
            seq.prefill_end = None
            seq.finish_reason = "error"
            self.scheduler.finish(seq)
            self._seqs.pop(seq.request_id, None)
            error = StepError(
                f"request {seq.request_id!r} failed in an engine step ({reason}): its KV blocks were freed "
                "and the engine serves other requests; retry it"
            )
            error.__cause__ = cause
            outputs.append(self.outputs.error_output(seq, error))
        return outputs

    def score(self, token_ids: list[int]):
        """Teacher-forced logits [T, V] for every position of token_ids, in blocks borrowed from the
        pool for the call, so neither running requests nor the prefix cache are touched."""
        self._check_length(len(token_ids), SamplingParams(max_tokens=1))
        bm = self.scheduler.block_manager
        needed = -(-len(token_ids) // self.config.kvcache_block_size)
        # the whole sequence is one step, so the window pool, if any, holds all of it too
        free = min(bm.num_free_blocks, bm.window.num_free_blocks) if bm.window else bm.num_free_blocks
        if needed > free:
            raise RequestError(
                f"scoring {len(token_ids)} tokens needs {needed} free KV blocks, "
                f"{free} are free: score when fewer requests are running, or a shorter text"
            )
        blocks = bm.take_scratch_blocks(needed)
        window_blocks = bm.window.take_scratch(needed) if bm.window else []
        try:
            return self.executor.score(token_ids, (blocks, window_blocks))
        finally:
            bm.release_scratch_blocks(blocks)
            if bm.window:
                bm.window.release_scratch(window_blocks)

    def shutdown(self) -> None:
        """Stop the tensor-parallel worker processes, if any (also done at exit). The engine is then unusable."""
        self.executor.shutdown()

    def reset_prefix_cache(self) -> bool:
        """Drop every cached prefix; False (nothing dropped) while requests are running."""
        return self.scheduler.block_manager.reset_prefix_cache()

    def stats(self) -> dict:
        bm = self.scheduler.block_manager
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_cache_usage": bm.usage,
            "num_kv_blocks": bm.num_blocks,
            "kv_blocks_used_ever": bm.num_used_ever,  # on an unpooled CPU cache: the blocks resident in memory
            # the sliding-window layers' pool, where they have one (engine/window_blocks.py)
            "window_kv_blocks": bm.window.num_blocks if bm.window else 0,
            "window_kv_blocks_held": bm.window.num_held_blocks if bm.window else 0,
            "window_kv_blocks_used_ever": bm.window.pool.num_used_ever - 1 if bm.window else 0,
            "prefix_cache_hit_tokens": bm.num_cached_tokens_total,
            "prefix_cache_query_tokens": bm.num_queried_tokens_total,
            "prefill_tokens_computed": self.scheduler.num_prefill_tokens_computed,
            "generated_tokens": self.num_generated_tokens,
            "num_preemptions": self.scheduler.num_preemptions,
            "mixed_steps": self.scheduler.num_mixed_steps,  # steps that carried decode and prompt tokens
        }


def eos_token_ids(hf_config, tokenizer) -> set[int]:
    ids: set[int] = set()
    for value in (getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids
