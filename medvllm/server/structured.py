"""Structured outputs over the API: OpenAI's `response_format`, vLLM's `structured_outputs` and `guided_*`
fields, and forced tool calls (`tools` + `tool_choice` "required" or a named function), turned into the
StructuredOutputsParams a request runs under. The grammar is compiled here, off the event loop, so a bad
schema is a 400 before anything is queued and the engine finds the grammar in its cache."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from medvllm.errors import RequestError
from medvllm.server.errors import bad_request
from medvllm.server.protocol import SamplingFields
from medvllm.structured import StructuredOutputsParams

_GUIDED = {"guided_json": "json", "guided_regex": "regex", "guided_choice": "choice", "guided_grammar": "grammar"}


@dataclass
class ToolMode:
    """Forced tool calls: the output is `prefix(name) + arguments + suffix` (compact JSON, no free
    whitespace, so the arguments' text can be cut out while it streams)."""

    names: list[str]
    named: bool  # tool_choice named one function: the output is its arguments alone

    def prefix(self, name: str) -> str:
        return "" if self.named else '{"name": ' + _json_string(name) + ', "arguments": '

    @property
    def suffix(self) -> str:
        return "" if self.named else "}"


def constraint(req: SamplingFields) -> tuple[StructuredOutputsParams | None, ToolMode | None, str | None]:
    """(the constraint, the tool mode or None, the request field it came from) for one request."""
    found: list[tuple[str, dict]] = []
    rf = req.response_format
    if rf is not None and rf.get("type") != "text":
        found.append(("response_format", _response_format(rf)))
    if req.structured_outputs is not None:
        if not isinstance(req.structured_outputs, dict):
            raise bad_request('structured_outputs must be an object such as {"json": {...}}', "structured_outputs")
        found.append(("structured_outputs", dict(req.structured_outputs)))
    for field, kind in _GUIDED.items():
        if getattr(req, field) is not None:
            found.append((field, {kind: getattr(req, field)}))
    tools = _tool_mode(req) if getattr(req, "tools", None) else None
    if tools is not None:
        found.append(("tool_choice", tools[1]))
    if len(found) > 1:
        names = ", ".join(f for f, _ in found)
        raise bad_request(f"{names} each set an output constraint: give only one of them", param=found[1][0])
    if not found:
        return None, None, None
    field, fields = found[0]
    try:
        return StructuredOutputsParams(**fields), tools and tools[0], field
    except TypeError:
        raise bad_request(
            f"{field} has unknown keys {sorted(fields)}: use json, regex, choice, grammar or json_object", field
        ) from None
    except RequestError as e:
        raise bad_request(str(e), param=field) from None


async def compile_constraint(state, so: StructuredOutputsParams | None, field: str | None) -> None:
    """Compiles `so` on a worker thread (cached); an invalid or unenforceable constraint is a 400 naming it."""
    if so is None:
        return
    try:
        await asyncio.to_thread(state.grammars.compile, so)
    except RequestError as e:
        raise bad_request(f"{field}: {e}", param=field, code="invalid_constraint") from None


def _response_format(rf: dict) -> dict:
    kind = rf.get("type")
    if kind == "json_object":
        return {"json_object": True}
    if kind == "json_schema":
        spec = rf.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
            raise bad_request(
                'response_format.json_schema.schema is missing: give {"type": "json_schema", "json_schema": '
                '{"name": ..., "schema": {...}}}',
                param="response_format",
            )
        return {"json": spec["schema"]}  # strict or not, the schema is enforced
    raise bad_request(
        f"response_format.type={kind!r} is not supported: use text, json_object or json_schema", "response_format"
    )


def _tool_mode(req) -> tuple[ToolMode, dict] | None:
    functions = {}
    for i, tool in enumerate(req.tools):
        fn = tool.get("function") if isinstance(tool, dict) and tool.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise bad_request(
                f'tools[{i}] must be {{"type": "function", "function": {{"name": ..., "parameters": ...}}}}', "tools"
            )
        params = fn.get("parameters", {"type": "object", "properties": {}})
        functions[fn["name"]] = params if isinstance(params, dict) else {"type": "object"}
    choice = req.tool_choice
    if choice in (None, "auto"):
        raise bad_request(
            'tool_choice "auto" is not supported (this server does not parse free-form tool calls): '
            'use "required", a named function, or "none"',
            param="tool_choice",
        )
    if choice == "none":
        return None
    if choice == "required":
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": name}, "arguments": schema},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for name, schema in functions.items()
        ]
        return ToolMode(list(functions), named=False), {"json": calls[0] if len(calls) == 1 else {"anyOf": calls}}
    name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
    if name not in functions:
        raise bad_request(
            f"tool_choice={choice!r} names no function in tools ({', '.join(functions)}): "
            'give "required", "none" or {"type": "function", "function": {"name": ...}}',
            param="tool_choice",
        )
    return ToolMode([name], named=True), {"json": functions[name]}


def _json_string(text: str) -> str:
    import json

    return json.dumps(text)
