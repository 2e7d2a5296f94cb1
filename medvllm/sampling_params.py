"""SamplingParams: how one request picks its next tokens and when it stops (mirrors vLLM's)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from numbers import Integral, Real

from medvllm.errors import RequestError
from medvllm.structured.params import StructuredOutputsParams

# below this a positive temperature overflows logits / temperature to inf (vLLM raises it the same way)
MIN_TEMPERATURE = 0.01

# float fields: (lowest, highest, lowest allowed?, highest allowed?, what the range means)
_FLOAT_RANGES = {
    "temperature": (0.0, math.inf, True, False, "a finite number >= 0 (0 means greedy)"),
    "top_p": (0.0, 1.0, False, True, "a finite number in (0, 1] (1 keeps every token)"),
    "min_p": (0.0, 1.0, True, True, "a finite number in [0, 1] (0 keeps every token)"),
    "repetition_penalty": (0.0, math.inf, False, False, "a finite number > 0 (1 means no penalty)"),
    "presence_penalty": (-2.0, 2.0, True, True, "a finite number in [-2, 2]"),
    "frequency_penalty": (-2.0, 2.0, True, True, "a finite number in [-2, 2]"),
}


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
    structured_outputs: StructuredOutputsParams | None = None  # the constraint the output must satisfy
    stop_strings: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self._check_types()
        self.stop_strings = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self.stop_token_ids = list(self.stop_token_ids or [])
        self._check()
        if 0 < self.temperature < MIN_TEMPERATURE:
            warnings.warn(
                f"temperature={self.temperature!r} is below {MIN_TEMPERATURE}: raised to {MIN_TEMPERATURE} "
                "(use 0 for greedy)",
                stacklevel=3,
            )
            self.temperature = MIN_TEMPERATURE

    def _bad(self, name: str, rule: str) -> RequestError:
        return RequestError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

    def _check_types(self) -> None:
        # a value of the wrong type would otherwise fail deep inside a step (or compare as NaN does)
        for name, (low, high, low_ok, high_ok, rule) in _FLOAT_RANGES.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
                raise self._bad(name, f"it must be {rule}")
            if value < low or value > high or (value == low and not low_ok) or (value == high and not high_ok):
                raise self._bad(name, f"it must be {rule}")
        for name, optional in (("top_k", False), ("seed", True), ("max_tokens", True), ("logprobs", True)):
            value = getattr(self, name)
            if (value is None and not optional) or (value is not None and not _is_int(value)):
                raise self._bad(name, "it must be an integer" + (" or None" if optional else ""))
        ids = self.stop_token_ids
        if ids is not None and (not isinstance(ids, (list, tuple)) or not all(_is_int(t) for t in ids)):
            raise self._bad("stop_token_ids", "it must be a list of integer token ids")
        if isinstance(self.structured_outputs, dict):  # as JSON gives it: {"json": {...}}
            try:
                self.structured_outputs = StructuredOutputsParams(**self.structured_outputs)
            except TypeError:
                raise self._bad(
                    "structured_outputs", "its keys must be among json, json_object, regex, choice, grammar"
                ) from None
        so = self.structured_outputs
        if so is not None and not isinstance(so, StructuredOutputsParams):
            raise self._bad("structured_outputs", "it must be a StructuredOutputsParams (json=, regex=, choice=, ...)")
        if self.stop is not None and not isinstance(self.stop, str):
            if not isinstance(self.stop, (list, tuple)) or not all(isinstance(s, str) for s in self.stop):
                raise self._bad("stop", "it must be a string or a list of strings")

    def _check(self) -> None:
        if self.top_k < -1:
            raise self._bad("top_k", "it must be -1 (all tokens) or >= 1")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise self._bad("max_tokens", "it must be >= 1")
        if self.logprobs is not None and not 0 <= self.logprobs <= 20:
            raise self._bad("logprobs", "it must be between 0 and 20")
        if any(not s for s in self.stop_strings):
            raise self._bad("stop", "stop strings must be non-empty")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)
