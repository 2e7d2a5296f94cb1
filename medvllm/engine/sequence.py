"""Sequence: one request's tokens, its KV blocks and its place in the scheduler."""

from __future__ import annotations

import enum
import time

from medvllm.outputs import RequestMetrics
from medvllm.sampling_params import SamplingParams


class SequenceStatus(enum.Enum):
    WAITING = enum.auto()
    RUNNING = enum.auto()
    FINISHED = enum.auto()


class Sequence:
    def __init__(
        self,
        request_id: str,
        prompt: str | None,
        prompt_token_ids: list[int],
        params: SamplingParams,
        block_size: int,
        arrival_time: float | None = None,
        cache_salt: str | None = None,
        priority: int = 0,
    ):
        self.request_id = request_id
        self.prompt = prompt
        self.params = params
        self.block_size = block_size
        self.token_ids: list[int] = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.status = SequenceStatus.WAITING
        self.priority = priority  # under scheduling_policy='priority': lower runs first (vLLM's meaning)
        self.arrival = 0  # the scheduler's count of requests added before this one: ties go to the earlier
        self.block_table: list[int] = []
        # the sliding-window layers' blocks, parallel to block_table, where they have a pool of their own
        self.window_table: list[int] = []
        # a request only shares cached prefix blocks with requests of the same salt (vLLM's cache_salt)
        self.cache_salt = cache_salt
        self.block_hashes: list[bytes] = []  # chain hashes of the full blocks, filled by the BlockManager
        # tokens whose KV is already in the cache (prefix-cache hits + computed ones)
        self.num_computed_tokens = 0
        # a prefill step computes tokens [num_computed_tokens, prefill_end): a long prompt takes several
        self.prefill_end: int | None = None
        self.finish_reason: str | None = None
        self.ends_with_stop_token = False  # finished by eos or a stop token id (not in the text)
        self.stream = False  # detokenize every step (streaming) rather than once at the end
        self.grammar = None  # structured outputs: the GrammarState the output is held to
        self.stop_reason: str | int | None = None
        self.logprobs: list[dict[int, float]] | None = [] if params.logprobs is not None else None
        self.cumulative_logprob = 0.0
        self.text = ""  # detokenized output, truncated at a stop string
        self.text_sent = 0  # how much of `text` the stream has handed out
        self.tokens_sent = 0
        self.metrics = RequestMetrics(
            arrival_time=arrival_time or time.time(), num_prompt_tokens=self.num_prompt_tokens
        )

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_blocks(self) -> int:
        return (len(self.token_ids) + self.block_size - 1) // self.block_size

    @property
    def is_prefilling(self) -> bool:
        """Admitted, with prompt tokens still to compute before it can decode (a prompt split over steps)."""
        return bool(self.block_table) and self.num_computed_tokens < len(self.token_ids) - 1

    @property
    def is_finished(self) -> bool:
        return self.status == SequenceStatus.FINISHED

    def kv_key(self) -> bytes:
        """Everything besides the token ids that changes this request's KV: mixed into its block hashes,
        so only requests that agree on all of it share blocks (adapters or images would join here)."""
        return b"" if self.cache_salt is None else b"salt:" + self.cache_salt.encode()

    def block_tokens(self, i: int) -> list[int]:
        return self.token_ids[i * self.block_size : (i + 1) * self.block_size]

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)
        self.metrics.num_generation_tokens = self.num_output_tokens
