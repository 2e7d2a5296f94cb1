"""SamplingParams: how one request picks its next tokens and when it stops (mirrors vLLM's)."""

from __future__ import annotations

from dataclasses import dataclass, field

from medvllm.errors import RequestError


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = -1  # -1 (or 0) means all tokens
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    max_tokens: int | None = 16  # None: until EOS or max_model_len
    stop: list[str] | str | None = None
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # top-N logprobs per generated token
    skip_special_tokens: bool = True
    stop_strings: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.stop_strings = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._check()

    def _check(self) -> None:
        def bad(name: str, rule: str) -> RequestError:
            return RequestError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

        if self.temperature < 0:
            raise bad("temperature", "it must be >= 0 (0 means greedy)")
        if not 0 < self.top_p <= 1:
            raise bad("top_p", "it must be in (0, 1]")
        if self.top_k < -1:
            raise bad("top_k", "it must be -1 (all tokens) or >= 1")
        if not 0 <= self.min_p <= 1:
            raise bad("min_p", "it must be in [0, 1]")
        if self.repetition_penalty <= 0:
            raise bad("repetition_penalty", "it must be > 0 (1 means no penalty)")
        if not -2 <= self.presence_penalty <= 2:
            raise bad("presence_penalty", "it must be in [-2, 2]")
        if not -2 <= self.frequency_penalty <= 2:
            raise bad("frequency_penalty", "it must be in [-2, 2]")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise bad("max_tokens", "it must be >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise bad("logprobs", "it must be between 0 and 20")
        if any(not s for s in self.stop_strings):
            raise bad("stop", "stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
