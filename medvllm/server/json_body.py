"""A request body as strict JSON: what Python's json module reads but no JSON text means (NaN,
Infinity, numbers that overflow to them, lone UTF-16 surrogates that no UTF-8 text can hold, nesting
deeper than the parser recurses) is refused as invalid JSON, with a 400, rather than reaching the engine."""

from __future__ import annotations

import json
import math


class NotJSON(ValueError):
    pass


def loads(raw: bytes) -> object:
    """The parsed body; raises NotJSON naming the problem (never echoing the text)."""
    try:
        body = json.loads(raw, parse_constant=_constant, parse_float=_finite)
    except RecursionError:
        raise NotJSON("it is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise NotJSON(str(e)) from None
    _check_strings(body)
    return body


def _constant(name: str) -> float:
    raise NotJSON(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise NotJSON("a number is too large for a 64-bit float")
    return value


def _check_strings(body: object) -> None:
    """Refuses strings (keys too) holding a lone surrogate; walks without recursion."""
    stack = [body]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings = (item,)
        elif isinstance(item, dict):
            strings = item.keys()
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
            continue
        else:
            continue
        for s in strings:
            try:
                s.encode("utf-8")
            except UnicodeEncodeError:
                raise NotJSON("a string holds a lone UTF-16 surrogate (\\ud800-\\udfff), which is not text") from None
