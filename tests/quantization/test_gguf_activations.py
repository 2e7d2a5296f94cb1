"""`gguf_activations`: how the gguf method rounds each projection's inputs, set per engine and honoured
per layer (q/k/v and the LM head in two int8 parts under `mixed`, the rest in one)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from gguf import GGMLQuantizationType as Q

from medvllm import LLM
from medvllm.config import Config, ConfigWarning
from medvllm.errors import ConfigError
from medvllm.hardware import detect
from tests.quantization.test_gguf_method import _gguf


def _parts(llm) -> dict[str, set[int]]:
    model = llm.engine.runner.model
    seen: dict[str, set[int]] = {}
    for name, module in model.named_modules():
        method = getattr(module, "method", None)
        if getattr(method, "name", None) == "gguf":
            role = name.rsplit(".", 1)[-1]
            seen.setdefault(role, set()).add(method.parts)
    return seen


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("mixed", {"qkv_proj": {2}, "o_proj": {1}, "gate_up_proj": {1}, "down_proj": {1}, "lm_head": {2}}),
        ("int8x2", {"qkv_proj": {2}, "o_proj": {2}, "gate_up_proj": {2}, "down_proj": {2}, "lm_head": {2}}),
        ("int8", {"qkv_proj": {1}, "o_proj": {1}, "gate_up_proj": {1}, "down_proj": {1}, "lm_head": {1}}),
    ],
)
def test_each_projection_takes_the_parts_the_setting_names(tmp_path, setting, expected):
    path = _gguf(tmp_path, "llama", Q.Q4_1)
    llm = LLM(model=str(path), deployment_profile="none", quantization_method="gguf", gguf_activations=setting)
    assert _parts(llm) == expected
    counts = llm.runtime_info()["quantization"]["activations"]
    names = {1: "int8", 2: "int8x2"}
    layers = len(llm.engine.runner.model.model.layers)
    want: dict[str, int] = {}
    for role, parts in expected.items():
        n = 1 if role == "lm_head" else layers
        want[names[next(iter(parts))]] = want.get(names[next(iter(parts))], 0) + n
    assert counts == want


def test_more_parts_stay_nearer_the_float32_file(tmp_path):
    """The same prompt under each setting: int8x2 is the nearest to the file in float32, int8 the farthest."""
    path = _gguf(tmp_path, "llama", Q.Q4_1)
    ids = list(range(5, 45))
    reference = LLM(model=str(path), deployment_profile="none").engine.score(ids).double()
    dist = {}
    for setting in ("int8", "mixed", "int8x2"):
        llm = LLM(model=str(path), deployment_profile="none", quantization_method="gguf", gguf_activations=setting)
        dist[setting] = (llm.engine.score(ids).double() - reference).norm().item()
    assert dist["int8x2"] < dist["mixed"] < dist["int8"], dist


def test_bad_values_and_settings_without_effect():
    hw = detect()
    with pytest.raises(ConfigError, match="gguf_activations='int4' is invalid: use one of mixed, int8x2, int8"):
        Config(device="cpu", quantization_method="gguf", gguf_activations="int4", hardware=hw)
    with pytest.warns(ConfigWarning, match="gguf_activations='int8' does nothing with quantization_method='dynamic'"):
        Config(device="cpu", quantization_method="dynamic", gguf_activations="int8", hardware=hw)
    Config(device="cpu", quantization_method="gguf", gguf_activations="int8", hardware=hw)  # no warning


def test_profile_key_and_flag(tmp_path):
    profile = tmp_path / "p.json"
    profile.write_text(
        '{"profile": "p", "engine": {"device": "cpu", "quantization_method": "gguf", "gguf_activations": 8}}'
    )
    run = subprocess.run(
        [sys.executable, "-m", "medvllm.cli", "profiles", "validate", str(profile)], capture_output=True, text=True
    )
    assert run.returncode != 0
    assert 'engine.gguf_activations: 8 is not one of "mixed", "int8x2", "int8"' in run.stdout, run.stdout
    from medvllm.cli.settings_flags import CHOICES

    assert CHOICES["gguf_activations"] == ("mixed", "int8x2", "int8")
