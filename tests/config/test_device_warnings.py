"""Settings that do nothing on the chosen device are accepted with a ConfigWarning; a setting left at its
default never warns."""

import dataclasses
import warnings

import pytest

from medvllm.config import Config, ConfigWarning
from medvllm.deployment import resolve
from medvllm.hardware import GPUInfo, HardwareInfo

CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
GPU = dataclasses.replace(CPU, gpus=(GPUInfo("A100", (8, 0), 80 << 30),))


def warned(hw, **kw) -> list[str]:
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        c = Config(hardware=hw, **kw)
    assert [str(w.message) for w in record if issubclass(w.category, ConfigWarning)] == c.warnings
    return c.warnings


@pytest.mark.parametrize(
    "hw,settings,says",
    [
        (CPU, {"gpu_memory_utilization": 0.5}, "gpu_memory_utilization=0.5 does nothing on cpu"),
        (GPU, {"kv_cache_space_gib": 2.0}, "kv_cache_space_gib=2.0 does nothing on cuda"),
        (CPU, {"pool_device": "cpu"}, "pool_device='cpu' does nothing with enable_memory_pooling=false"),
        (GPU, {"pool_device": "cuda"}, "pool_device='cuda' does nothing with enable_memory_pooling=false"),
        (GPU, {"cudnn_benchmark": True}, "cudnn_benchmark=true does nothing"),
        (CPU, {"cudnn_benchmark": True}, "cudnn_benchmark=true does nothing"),
        (CPU, {"allow_tf32": True}, "allow_tf32=true does nothing on cpu"),
    ],
)
def test_a_setting_without_effect_warns(hw, settings, says):
    found = warned(hw, **settings)
    assert len(found) == 1 and says in found[0], found


@pytest.mark.parametrize(
    "hw,settings",
    [
        (CPU, {}),
        (GPU, {}),
        (CPU, {"kv_cache_space_gib": 2.0, "memory_efficient": True}),
        (GPU, {"gpu_memory_utilization": 0.5, "allow_tf32": True}),
        (CPU, {"pool_device": "cpu", "enable_memory_pooling": True}),
        (GPU, {"pool_device": "cuda", "enable_memory_pooling": True}),
        (GPU, {"memory_efficient": True}),  # its automatic KV limit is not a setting the user made
    ],
)
def test_settings_with_effect_and_defaults_do_not_warn(hw, settings):
    assert warned(hw, **settings) == []


def test_resolution_carries_them_and_shipped_profiles_raise_none():
    r = resolve({"gpu_memory_utilization": 0.7}, "none", {}, CPU)
    assert any("gpu_memory_utilization=0.7 does nothing on cpu" in w for w in r.warnings)
    for name, hw in [("edge_cpu_int8", CPU), ("cpu", CPU), ("onprem_gpu_bf16_flash", GPU)]:
        assert resolve({}, name, {}, hw).warnings == [], name
