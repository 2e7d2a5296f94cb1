"""Profile keys that are not Config fields, and their translation into the one field each concept has.

Profiles, CLI flags and `LLM(...)` keyword arguments keep the paired keys they have always accepted:
`enable_mixed_precision` + `mixed_precision_dtype` (-> `dtype`), `enable_flash_attention` (->
`attention_impl`) and `quantization_bits` (-> `quantization_method`). The deployment layer merges
settings with these keys, then `fields()` turns them into Config values (refusing contradictions with
the messages users know) and `sources()` gives each translated field the source of the keys that
decided it, so provenance still says `profile:NAME` or `cli`.
"""

from __future__ import annotations

from medvllm.config import DTYPES, QUANT_METHOD_ALIASES, QUANT_METHODS, fail, quantization_bits

# key -> its default (what leaving it out means)
KEYS = {
    "enable_mixed_precision": False,
    "mixed_precision_dtype": "bf16",
    "enable_flash_attention": False,
    "quantization_bits": None,
}
# the Config field each key folds into (the merge lists a key right after its field)
FIELD_OF = {
    "enable_mixed_precision": "dtype",
    "mixed_precision_dtype": "dtype",
    "enable_flash_attention": "attention_impl",
    "quantization_bits": "quantization_method",
}
MIXED_PRECISION_DTYPES = {"bf16": "bfloat16", "fp16": "float16"}
_RANK = {"default": 0, "cli": 2}  # any other source (profile:NAME, auto:NAME) sits between the two


def fields(values: dict) -> dict:
    """Config keyword arguments from settings that may use the profile keys. Raises ConfigError."""
    keys = {k: values.get(k, default) for k, default in KEYS.items()}
    _check_types(keys)
    out = {k: v for k, v in values.items() if k not in KEYS}
    if keys["enable_mixed_precision"]:
        out["dtype"] = _mixed_dtype(values.get("dtype", "auto"), keys["mixed_precision_dtype"])
    if keys["enable_flash_attention"]:
        out["attention_impl"] = _flash(values.get("attention_impl", "auto"))
    if keys["quantization_bits"] is not None:
        out["quantization_method"] = _method(values.get("quantization_method"), keys["quantization_bits"])
    return out


def sources(values: dict, key_sources: dict) -> dict:
    """Each Config field's source: for a translated field, the strongest source among the keys that decided
    its value (e.g. `--no-mixed-precision` over a bf16 profile makes `dtype` come from `cli`)."""
    out = {k: s for k, s in key_sources.items() if k not in KEYS}
    for field, keys in _deciding(values).items():
        out[field] = max((key_sources[k] for k in keys), key=lambda s: _RANK.get(s, 1))
    return out


def _deciding(v: dict) -> dict[str, list[str]]:
    mixed, flash = v["enable_mixed_precision"], v["enable_flash_attention"]
    dtype = (
        ["enable_mixed_precision", "mixed_precision_dtype"] + (["dtype"] if v["dtype"] != "auto" else [])
        if mixed
        else ["dtype", "enable_mixed_precision"]
    )
    attention = (
        ["enable_flash_attention"] + (["attention_impl"] if v["attention_impl"] != "auto" else [])
        if flash
        else ["attention_impl"] + ([] if v["attention_impl"] == "flash" else ["enable_flash_attention"])
    )
    method = ["quantization_method"] + (["quantization_bits"] if v["quantization_bits"] is not None else [])
    return {"dtype": dtype, "attention_impl": attention, "quantization_method": method}


def _check_types(keys: dict) -> None:
    for name in ("enable_mixed_precision", "enable_flash_attention"):
        if not isinstance(keys[name], bool):
            raise fail(name, f"{name}={keys[name]!r} is invalid: it must be true or false")
    mp = keys["mixed_precision_dtype"]
    if not isinstance(mp, str) or mp not in MIXED_PRECISION_DTYPES:  # a list or dict cannot be looked up
        raise fail(
            "mixed_precision_dtype",
            f"mixed_precision_dtype={mp!r} is invalid: use one of {', '.join(MIXED_PRECISION_DTYPES)}",
        )
    bits = keys["quantization_bits"]
    if bits is not None and (not isinstance(bits, int) or isinstance(bits, bool) or bits not in (4, 8)):
        raise fail("quantization_bits", f"quantization_bits={bits!r} is invalid: use 8, 4, or null for no quantization")


def _mixed_dtype(dtype, mixed_precision_dtype: str):
    wanted = MIXED_PRECISION_DTYPES[mixed_precision_dtype]
    if dtype not in DTYPES:
        return dtype  # Config names the bad value
    if dtype not in ("auto", wanted):
        raise fail(
            ("dtype", "enable_mixed_precision", "mixed_precision_dtype"),
            f"dtype={dtype!r} contradicts enable_mixed_precision=true with mixed_precision_dtype="
            f"{mixed_precision_dtype!r}: set dtype='auto' (or {wanted!r}), or turn mixed precision off",
        )
    return wanted


def _flash(attention_impl):
    if attention_impl == "sdpa":
        raise fail(
            ("enable_flash_attention", "attention_impl"),
            "enable_flash_attention=true contradicts attention_impl='sdpa': "
            "set attention_impl to 'flash' (or 'auto'), or turn flash attention off",
        )
    return "flash" if attention_impl == "auto" else attention_impl


def _method(method, bits: int):
    if method is None:
        raise fail(
            ("quantization_bits", "quantization_method"),
            f"quantization_bits={bits} needs a quantization_method: use "
            + ("'dynamic' (CPU) or 'bnb-8bit' (CUDA)" if bits == 8 else "'bnb-nf4' (CUDA)"),
        )
    if method not in QUANT_METHODS:
        return method  # Config names the bad value
    implied = quantization_bits(method)
    if implied is None:
        raise fail(
            ("quantization_bits", "quantization_method"),
            f"quantization_bits={bits} does not apply to quantization_method={method!r}, which runs the bits "
            "the GGUF file stores: drop quantization_bits",
        )
    if bits != implied:
        raise fail(
            ("quantization_bits", "quantization_method"),
            f"quantization_bits={bits} does not match quantization_method="
            f"{QUANT_METHOD_ALIASES.get(method, method)!r}, which is {implied}-bit: "
            f"set quantization_bits={implied}, or pick a {bits}-bit method",
        )
    return method
