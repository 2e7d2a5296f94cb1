"""The profile JSON Schema (shipped with the package) and a small checker for the subset of JSON Schema it uses.

The schema file is the single source of truth; `jsonschema` is not a runtime dependency, so this checker
interprets the keywords the schema uses (type, enum, properties, required, additionalProperties false,
minimum, maximum, exclusiveMinimum, minLength). The tests check it against `jsonschema` on the same inputs.
"""

from __future__ import annotations

import difflib
import functools
import json
from importlib import resources

SCHEMA_FILE = "deployment_profile.schema.json"
_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "null": lambda v: v is None,
}


@functools.lru_cache(maxsize=1)
def load_schema() -> dict:
    return json.loads(resources.files("medvllm.deployment").joinpath(SCHEMA_FILE).read_text(encoding="utf-8"))


def _show(value) -> str:
    return json.dumps(value)


def _where(path: str) -> str:
    return path or "the top level"


def check(value, schema: dict | None = None, path: str = "") -> list[str]:
    """Return one message per violation, each naming where (e.g. `engine.quantization_bits`) and why."""
    schema = load_schema() if schema is None else schema
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        allowed = [types] if isinstance(types, str) else list(types)
        if not any(_TYPES[t](value) for t in allowed):
            return [f"{_where(path)}: {_show(value)} is not of type {' or '.join(allowed)}"]
    if "enum" in schema and not any(value == e and type(value) is type(e) for e in schema["enum"]):
        return [f"{_where(path)}: {_show(value)} is not one of {', '.join(_show(e) for e in schema['enum'])}"]
    if _TYPES["number"](value):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{_where(path)}: {_show(value)} is less than the minimum {schema['minimum']}")
        if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
            errors.append(f"{_where(path)}: {_show(value)} must be greater than {schema['exclusiveMinimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{_where(path)}: {_show(value)} is more than the maximum {schema['maximum']}")
    if isinstance(value, str) and len(value) < schema.get("minLength", 0):
        errors.append(f"{_where(path)}: {_show(value)} is shorter than {schema['minLength']} character(s)")
    if isinstance(value, dict):
        for key in schema.get("required", ()):
            if key not in value:
                errors.append(f"{_where(path)}: the required key {key!r} is missing")
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors.extend(check(value[key], sub, f"{path}.{key}" if path else key))
        if schema.get("additionalProperties", True) is False:
            errors.extend(_unknown(key, sorted(schema.get("properties", {})), path) for key in value)
    return [e for e in errors if e]


def _unknown(key: str, known: list[str], path: str) -> str:
    """'' for a known key; for another, a message naming it and the closest known key (a typo such as
    `memory_efficent` dropped silently would run something other than its author wrote)."""
    if key in known:
        return ""
    close = difflib.get_close_matches(key, known, n=1)
    fix = f"did you mean {close[0]!r}?" if close else f"use one of {', '.join(known)}"
    where = f"{path}.{key}" if key.isidentifier() else f"{_where(path)}[{_show(key)}]"  # one line, always
    return f"{where} is not a setting: {fix}"


def known_keys(section: str | None = None) -> set[str]:
    """Keys the schema defines at the top level, or inside `section` (e.g. 'engine')."""
    props = load_schema()["properties"]
    return set(props if section is None else props[section].get("properties", {}))
