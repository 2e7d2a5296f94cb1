"""Merge layers of settings into Config values, recording where each one came from.

Layers, lowest first: Config defaults ("default"), a profile ("profile:NAME" or "auto:NAME"), explicit
overrides ("cli"). The merge works on the keys profiles use, which include a few that are not Config
fields (translate.KEYS); `build` translates them, and `field_sources` gives the Config fields' sources.
Some settings come in pairs that must agree; when the overrides set one of a pair and
not the other, the other follows the override instead of contradicting it (e.g. `--quantization-method
dynamic` over a 4-bit profile also means 8 bits; `--no-flash-attention` over a flash profile means sdpa).
"""

from __future__ import annotations

import difflib
import warnings
from dataclasses import MISSING, fields

from medvllm.config import Config, ConfigWarning, quantization_bits
from medvllm.deployment import translate
from medvllm.errors import ConfigError
from medvllm.hardware import HardwareInfo

CLI = "cli"
DEFAULT = "default"


def keys() -> list[str]:
    """Every setting a profile or override may name: the Config fields, each followed by its profile keys."""
    out = []
    for name in Config.field_names():
        out += [name] + [k for k, field in translate.FIELD_OF.items() if field == name]
    return out


def defaults() -> dict:
    given = {f.name: f.default for f in fields(Config) if f.default is not MISSING}
    return {k: given[k] if k in given else translate.KEYS[k] for k in keys()}


def check_keys(overrides: dict) -> None:
    unknown = sorted((k for k in overrides if k not in keys()), key=str)
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), keys(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown setting(s) {', '.join(map(repr, unknown))}: {hint}valid ones are {', '.join(keys())}"
        )


def merge(profile_engine: dict | None, label: str | None, overrides: dict, hw: HardwareInfo) -> tuple[dict, dict]:
    """(values, sources) for every key of keys(), profile keys included."""
    values, sources = defaults(), {name: DEFAULT for name in keys()}
    for key, value in (profile_engine or {}).items():
        values[key], sources[key] = value, label
    for key, value in overrides.items():
        values[key], sources[key] = value, CLI
    _couple(values, sources, set(overrides), hw)
    return values, sources


def _bits_of(method) -> int | None:
    try:
        return quantization_bits(method)
    except (KeyError, TypeError):  # not a method: Config names it
        return None


def _follow(values: dict, sources: dict, key: str, value) -> None:
    if values[key] != value:
        values[key], sources[key] = value, CLI


def _couple(values: dict, sources: dict, set_by_cli: set, hw: HardwareInfo) -> None:
    def only(a: str, b: str) -> bool:
        return a in set_by_cli and b not in set_by_cli

    if only("quantization_method", "quantization_bits"):
        _follow(values, sources, "quantization_bits", _bits_of(values["quantization_method"]))
    elif only("quantization_bits", "quantization_method"):
        bits = values["quantization_bits"]
        if bits is None:
            _follow(values, sources, "quantization_method", None)
        elif _bits_of(values["quantization_method"]) != bits and bits in (4, 8):
            cpu = values["device"] == "cpu" or (values["device"] == "auto" and not hw.has_cuda)
            _follow(
                values, sources, "quantization_method", "bnb-nf4" if bits == 4 else "dynamic" if cpu else "bnb-8bit"
            )
    if only("enable_flash_attention", "attention_impl"):
        impl, on = values["attention_impl"], values["enable_flash_attention"]
        if on and impl == "sdpa":
            _follow(values, sources, "attention_impl", "flash")
        elif not on and impl == "flash":
            _follow(values, sources, "attention_impl", "sdpa")
    elif only("attention_impl", "enable_flash_attention") and values["attention_impl"] != "auto":
        _follow(values, sources, "enable_flash_attention", values["attention_impl"] == "flash")
    if only("dtype", "enable_mixed_precision") and values["dtype"] != "auto" and values["enable_mixed_precision"]:
        mixed = values["mixed_precision_dtype"]
        wanted = translate.MIXED_PRECISION_DTYPES.get(mixed) if isinstance(mixed, str) else None  # else Config says
        if wanted is not None and values["dtype"] != wanted:
            _follow(values, sources, "enable_mixed_precision", False)


def build(values: dict, hw: HardwareInfo) -> Config:
    """The Config that `values` (profile keys allowed) ask for, validated against `hw`; its warnings stay in
    config.warnings (not re-emitted)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return Config(**translate.fields(values), hardware=hw)


def field_sources(values: dict, sources: dict) -> dict:
    """The source of each Config field, from merge()'s values and sources."""
    return translate.sources(values, sources)
