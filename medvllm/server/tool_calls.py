"""Forced tool calls in OpenAI's shape: the constrained output (server/structured.py's ToolMode) cut
into the function's name and its arguments' text, whole or as stream deltas."""

from __future__ import annotations

import uuid

from medvllm.server.structured import ToolMode


def call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolCallText:
    """Follows one choice's growing text; `update` gives what is new: the call's name once it is known,
    then the arguments' new text (the closing brace of the call object held back until the end)."""

    def __init__(self, mode: ToolMode):
        self.mode = mode
        self.name: str | None = mode.names[0] if mode.named else None
        self.id = call_id()
        self.sent = 0  # characters of the arguments handed out
        self.announced = False

    def update(self, text: str, finished: bool) -> tuple[bool, str]:
        """(whether the name is newly known, the arguments' new text)."""
        if self.name is None:
            self.name = next((n for n in self.mode.names if text.startswith(self.mode.prefix(n))), None)
            if self.name is None:
                return False, ""
        new_name, self.announced = not self.announced, True
        args = self.arguments(text, finished)
        delta, self.sent = args[self.sent :], max(self.sent, len(args))
        return new_name, delta

    def arguments(self, text: str, finished: bool) -> str:
        body = text[len(self.mode.prefix(self.name)) :]
        suffix = self.mode.suffix
        if suffix:  # while streaming, the last character may be the call's closing brace: held back
            body = body.removesuffix(suffix) if finished else body[: -len(suffix)]
        return body

    def call(self, text: str) -> dict:
        """The whole call, for a reply that is not streamed."""
        self.update(text, True)
        args = self.arguments(text, True) if self.name is not None else text
        return {"id": self.id, "type": "function", "function": {"name": self.name or "", "arguments": args}}

    def header(self) -> dict:
        """The first stream delta of the call: its id, type and name, with empty arguments."""
        return {"index": 0, "id": self.id, "type": "function", "function": {"name": self.name, "arguments": ""}}


def finish_reason(mode: ToolMode, reason: str | None) -> str | None:
    """As OpenAI: "tool_calls" when the model had to call one of the tools, "stop" for a named one."""
    return "tool_calls" if reason == "stop" and not mode.named else reason
