"""StructuredOutputsParams: the constraint one request's output must satisfy (vLLM's shape).

Exactly one of `json` (a JSON Schema, as a dict or its text), `json_object` (any JSON object), `regex`,
`choice` (one of these strings, verbatim) or `grammar` (Lark, or llama.cpp's GBNF) is set. This module
only checks the shape; whether a schema, regex or grammar compiles is checked by `Grammars.compile`
against the engine's tokenizer, before the request is queued.
"""

from __future__ import annotations

import json as _json
from dataclasses import dataclass

from medvllm.errors import RequestError

KINDS = ("json", "json_object", "regex", "choice", "grammar")


@dataclass(frozen=True)
class StructuredOutputsParams:
    json: dict | str | None = None
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None

    def __post_init__(self) -> None:
        given = [k for k in KINDS if getattr(self, k) not in (None, False)]
        if len(given) != 1:
            what = "none is" if not given else f"{', '.join(given)} are"
            raise RequestError(
                f"structured_outputs needs exactly one of {', '.join(KINDS)}, but {what} set: give one constraint"
            )
        if self.json is not None and not isinstance(self.json, (dict, str)):
            raise RequestError(
                f"structured_outputs.json of type {type(self.json).__name__} is invalid: give a JSON Schema "
                "as a dict or as its JSON text"
            )
        if isinstance(self.json, str):
            try:
                schema = _json.loads(self.json)
            except ValueError as e:
                raise RequestError(f"structured_outputs.json is not valid JSON ({e}): give a JSON Schema") from None
            if not isinstance(schema, (dict, bool)):
                raise RequestError("structured_outputs.json must be a JSON Schema object: give a JSON object")
        if self.json_object not in (None, True, False):
            raise RequestError(f"structured_outputs.json_object={self.json_object!r} is invalid: give true")
        for name in ("regex", "grammar"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise RequestError(f"structured_outputs.{name}={value!r} is invalid: give a non-empty string")
        if self.choice is not None:
            ok = isinstance(self.choice, (list, tuple)) and self.choice and all(isinstance(c, str) for c in self.choice)
            if not ok or any(not c for c in self.choice):
                raise RequestError(
                    f"structured_outputs.choice={self.choice!r} is invalid: give a non-empty list of non-empty strings"
                )
            object.__setattr__(self, "choice", list(self.choice))

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) not in (None, False))

    def key(self) -> tuple[str, str]:
        """What identifies the compiled grammar: the kind and its text. A schema's keys keep their order:
        the output's properties come in the schema's order, so two orders are two grammars."""
        kind = self.kind
        if kind == "json":
            schema = _json.loads(self.json) if isinstance(self.json, str) else self.json
            return kind, _json.dumps(schema, separators=(",", ":"))
        if kind == "json_object":
            return kind, ""
        if kind == "choice":
            return kind, _json.dumps(self.choice)
        return kind, getattr(self, kind)
