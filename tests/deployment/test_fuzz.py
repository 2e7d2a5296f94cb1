"""Fuzzing the Python side of configuration (hypothesis, bounded): random profile JSON with right and wrong
keys and types, random Config(...) values per field, random resolve() inputs. Every input either gives a
valid Config or raises ConfigError / ProfileError with a one-line message: never another exception type.
The counts are in docs/DEPLOYMENT_PROFILES.md ("Fuzzing")."""

import dataclasses
import json
import math
import warnings

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from medvllm.config import Config, ConfigWarning
from medvllm.deployment import merge, profiles, resolve, schema, translate
from medvllm.errors import ConfigError, ProfileError
from medvllm.hardware import GPUInfo, HardwareInfo

EXAMPLES = 200
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
MACHINES = [
    CPU,
    dataclasses.replace(CPU, gpus=(GPUInfo("A100", (8, 0), 80 << 30),), backends={"bitsandbytes": True}),
    dataclasses.replace(CPU, gpus=(GPUInfo("T4", (7, 5), 16 << 30),) * 4),
    dataclasses.replace(CPU, quantization_methods=frozenset()),
]
ENGINE_KEYS = sorted(schema.known_keys("engine"))
SETTINGS = merge.keys()  # Config fields and profile keys

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-3, max_value=1 << 40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _valid_values(key: str):
    """Values the schema allows for `key` (so the fuzz also reaches the rules past the schema)."""
    prop = schema.load_schema()["properties"]["engine"]["properties"][key]
    if "enum" in prop:
        return st.sampled_from(prop["enum"])
    kinds = [prop["type"]] if isinstance(prop["type"], str) else prop["type"]
    options = []
    if "boolean" in kinds:
        options.append(st.booleans())
    if "integer" in kinds:
        options.append(st.integers(min_value=1, max_value=1 << 20))
    if "number" in kinds:
        options.append(st.floats(min_value=0.01, max_value=1.0) if "maximum" in prop else st.floats(0.001, 64))
    if "null" in kinds:
        options.append(st.none())
    return st.one_of(options)


def setting_values(keys):
    """A dict of some of `keys`, each with a valid value or an arbitrary JSON value."""
    return st.dictionaries(st.sampled_from(keys), json_values, max_size=6).flatmap(
        lambda d: st.fixed_dictionaries(
            {k: st.one_of(_valid_values(k), st.just(v)) if k in ENGINE_KEYS else st.just(v) for k, v in d.items()}
        )
    )


engines = st.one_of(
    setting_values(ENGINE_KEYS),
    st.dictionaries(st.one_of(st.sampled_from(ENGINE_KEYS), st.text(max_size=16)), json_values, max_size=5),
    json_values,
)
documents = st.one_of(
    st.fixed_dictionaries(
        {"engine": engines},
        optional={
            "profile": st.one_of(st.text(max_size=8), json_values),
            "category": st.one_of(st.sampled_from(["edge", "onprem", "cloud"]), json_values),
            "description": json_values,
            "later": json_values,
        },
    ),
    json_values,
)


def _one_line(e: Exception) -> None:
    event(type(e).__name__)  # shown by --hypothesis-show-statistics
    assert isinstance(e, (ConfigError, ProfileError)), repr(e)
    assert str(e) and "\n" not in str(e) and "\r" not in str(e), str(e)


def _valid(config: Config) -> None:
    event("valid Config")
    for name in ("kv_cache_space_gib", "gpu_memory_utilization"):
        assert math.isfinite(getattr(config, name)), (name, getattr(config, name))
    assert config.resolved_device.type in ("cpu", "cuda")


@FUZZ
@given(documents, st.sampled_from(MACHINES))
def test_profile_loader(document, hw):
    """parse() then the merge into a Config, as resolve() does with a profile."""
    text = json.dumps(document)
    try:
        profile = profiles.parse(text, "fuzz.json")
        assert set(profile.engine) <= set(ENGINE_KEYS)
        values, _ = merge.merge(profile.engine, "profile:fuzz", {}, hw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            _valid(merge.build(values, hw))
    except (ConfigError, ProfileError) as e:
        _one_line(e)


@FUZZ
@given(setting_values(sorted(set(Config.field_names()) - {"model"})), st.sampled_from(MACHINES), json_values)
def test_config(values, hw, model):
    values = {k: v for k, v in values.items() if k not in translate.KEYS}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConfigWarning)
            _valid(Config(model=model, **values, hardware=hw))
    except (ConfigError, ProfileError) as e:
        _one_line(e)


@FUZZ
@given(
    st.one_of(setting_values(SETTINGS), st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
    st.one_of(st.none(), st.sampled_from(["none", *profiles.names({})]), st.text(max_size=10)),
    st.sampled_from(MACHINES),
)
def test_resolve(overrides, profile, hw):
    try:
        r = resolve(overrides, profile, {}, hw)
        _valid(r.config)
        assert set(r.settings()) == set(Config.field_names())
    except (ConfigError, ProfileError) as e:
        _one_line(e)


@pytest.mark.parametrize("value", [math.inf, math.nan, -math.inf])
def test_non_finite_limits_are_refused(value):
    for name in ("kv_cache_space_gib", "gpu_memory_utilization"):
        with pytest.raises(ConfigError, match=name):
            Config(**{name: value}, hardware=CPU)


@pytest.mark.parametrize("value", [["bf16"], {"a": 1}])
def test_an_unhashable_mixed_precision_dtype_is_a_config_error(value):
    """Found by test_resolve: a list here was looked up in a dict (TypeError)."""
    for overrides in ({"mixed_precision_dtype": value}, {"dtype": "float32", "mixed_precision_dtype": value}):
        with pytest.raises(ConfigError, match="mixed_precision_dtype=.* is invalid"):
            resolve({"enable_mixed_precision": True, **overrides}, "none", {}, CPU)
