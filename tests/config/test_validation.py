"""Config validation: types, ranges, combinations, and what the hardware can do (fake HardwareInfo)."""

import dataclasses
import warnings

import pytest
import torch

from medvllm.config import Config, ConfigWarning
from medvllm.deployment.merge import build
from medvllm.errors import ConfigError
from medvllm.hardware import GPUInfo, HardwareInfo, detect

CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
CPU_BF16 = dataclasses.replace(CPU, cpu_flags=frozenset({"avx512_bf16"}))
A100 = GPUInfo("A100", (8, 0), 80 << 30)
T4 = GPUInfo("T4", (7, 5), 16 << 30)
GPU = dataclasses.replace(CPU, gpus=(A100,), backends={"bitsandbytes": True})
GPU_NO_BNB = dataclasses.replace(GPU, backends={})
OLD_GPU = dataclasses.replace(GPU, gpus=(T4,))


def make(hw=CPU, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigWarning)
        return Config(hardware=hw, **kw)


def error(hw=CPU, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        make(hw, **kw)
    return str(e.value)


def from_keys(hw=CPU, **kw):
    """A Config from settings that may use the profile keys (enable_mixed_precision, quantization_bits, ...),
    translated as profiles, CLI flags and LLM(...) keyword arguments are."""
    return build(kw, hw)


def key_error(hw=CPU, **kw) -> str:
    with pytest.raises(ConfigError) as e:
        from_keys(hw, **kw)
    return str(e.value)


def test_defaults_are_valid_and_keep_their_values():
    c = make()
    assert (c.device, c.tensor_parallel_size, c.dtype, c.quantization_method) == ("auto", 1, "auto", None)
    assert c.attention_impl == "auto" and c.hardware is CPU
    assert c.max_num_seqs == 128 and c.kvcache_block_size == 16 and c.warnings == []


def test_hardware_is_not_a_field():
    assert "hardware" not in Config.field_names()
    assert "hardware" not in make().to_dict()


def test_one_field_per_concept():
    for gone in ("enable_mixed_precision", "mixed_precision_dtype", "enable_flash_attention", "quantization_bits"):
        assert gone not in Config.field_names()
        with pytest.raises(TypeError):
            Config(hardware=CPU, **{gone: None})
    assert not hasattr(Config, "wants_flash_attention")


def test_hardware_is_an_explicit_input():
    with pytest.raises(TypeError, match="hardware"):
        Config()
    with pytest.raises(ConfigError, match="hardware=None is invalid"):
        Config(hardware=None)


def test_resolved_device_and_dtypes_come_from_the_fields_and_the_snapshot():
    assert make(CPU).resolved_device == torch.device("cpu")
    assert make(GPU).resolved_device == torch.device("cuda")  # the snapshot decides, not this machine
    assert make(GPU, device="cpu").resolved_device == torch.device("cpu")
    c = make(GPU, dtype="bfloat16")
    assert (c.torch_dtype, c.kv_torch_dtype) == (torch.bfloat16, torch.bfloat16)
    assert (make().torch_dtype, make(GPU, dtype="float16").torch_dtype) == (torch.float32, torch.float16)


@pytest.mark.parametrize(
    "name,value",
    [
        ("max_num_seqs", 0),
        ("max_num_seqs", "4"),
        ("tensor_parallel_size", True),
        ("kvcache_block_size", 1.5),
        ("max_model_len", 0),
        ("num_kvcache_blocks", -1),
        ("seed", -1),
        ("seed", "1"),
        ("kv_cache_space_gib", 0),
        ("kv_cache_space_gib", "1"),
        ("gpu_memory_utilization", 1.5),
        ("gpu_memory_utilization", 0),
        ("enable_mixed_precision", "yes"),
        ("allow_tf32", 1),
        ("model", ""),
        ("enable_flash_attention", 0),
    ],
)
def test_bad_types_and_ranges_name_the_field_and_value(name, value):
    msg = key_error(**{name: value})
    assert f"{name}={value!r}" in msg


@pytest.mark.parametrize("name", ["device", "dtype", "mixed_precision_dtype", "attention_impl", "pool_device"])
def test_bad_enum_lists_the_choices(name):
    msg = key_error(**{name: "bogus"})
    assert f"{name}='bogus'" in msg and "use one of" in msg


@pytest.mark.parametrize("name", ["device", "dtype", "attention_impl", "pool_device", "kv_cache_dtype"])
def test_bad_enum_of_a_config_field_lists_the_choices(name):
    msg = error(**{name: "bogus"})
    assert f"{name}='bogus'" in msg and "use one of" in msg


def test_batched_tokens_must_cover_num_seqs():
    assert "max_num_batched_tokens=8 is smaller than max_num_seqs=16" in error(
        max_num_seqs=16, max_num_batched_tokens=8
    )


@pytest.mark.parametrize("bits", [2, 16, "8", 8.0])
def test_quantization_bits_must_be_4_or_8(bits):
    assert "use 8, 4, or null" in key_error(quantization_bits=bits, quantization_method="dynamic")


def test_unknown_quantization_method():
    msg = error(quantization_method="gptq")
    assert "quantization_method='gptq'" in msg and "dynamic" in msg and "bnb-nf4" in msg


@pytest.mark.parametrize(
    "bits,method,hw", [(4, "dynamic", CPU), (4, "bnb-8bit", GPU), (8, "bnb-nf4", GPU), (8, "bnb-4bit", GPU)]
)
def test_bits_and_method_must_agree(bits, method, hw):
    msg = key_error(hw, quantization_bits=bits, quantization_method=method)
    assert "does not match" in msg and f"quantization_bits={bits}" in msg


def test_bits_without_method_is_refused_with_a_suggestion():
    assert "needs a quantization_method" in key_error(quantization_bits=8)


def test_method_implies_bits_and_4bit_is_an_alias_of_nf4():
    from medvllm.config import quantization_bits

    assert quantization_bits(make(quantization_method="dynamic").quantization_method) == 8
    c = make(GPU, quantization_method="bnb-4bit")
    assert (c.quantization_method, quantization_bits(c.quantization_method)) == ("bnb-nf4", 4)
    assert from_keys(GPU, quantization_bits=4, quantization_method="bnb-4bit").quantization_method == "bnb-nf4"
    assert from_keys(quantization_bits=8, quantization_method="dynamic").quantization_method == "dynamic"


@pytest.mark.parametrize("method", ["bnb-8bit", "bnb-nf4", "bnb-4bit"])
def test_cuda_only_method_on_cpu(method):
    msg = error(CPU, quantization_method=method)
    assert "needs a CUDA GPU" in msg and "dynamic" in msg
    assert "needs a CUDA GPU" in error(GPU, device="cpu", quantization_method=method)


def test_bitsandbytes_must_be_installed():
    assert "pip install bitsandbytes" in error(GPU_NO_BNB, quantization_method="bnb-8bit")
    make(GPU, quantization_method="bnb-8bit")


def test_dynamic_int8_is_cpu_only():
    make(CPU, quantization_method="dynamic")
    make(GPU, device="cpu", quantization_method="dynamic")
    assert "runs on CPU only" in error(GPU, quantization_method="dynamic")


def test_fp16_on_cpu_is_refused():
    assert "not supported on CPU" in key_error(enable_mixed_precision=True, mixed_precision_dtype="fp16")
    assert "not supported on CPU" in error(dtype="float16")
    assert from_keys(GPU, enable_mixed_precision=True, mixed_precision_dtype="fp16").dtype == "float16"
    make(GPU, dtype="float16")
    assert from_keys(CPU, mixed_precision_dtype="fp16").dtype == "auto"  # not in use while mixed precision is off


def test_bf16_needs_ampere_on_cuda():
    assert "SM >= 8" in key_error(OLD_GPU, enable_mixed_precision=True)
    assert "SM >= 8" in error(OLD_GPU, dtype="bfloat16")
    assert from_keys(GPU, enable_mixed_precision=True).dtype == "bfloat16"


def test_bf16_on_cpu_is_allowed_and_warns_when_emulated():
    assert make(CPU_BF16, dtype="bfloat16").warnings == []
    assert any("emulated" in w for w in make(CPU, dtype="bfloat16").warnings)


def test_dtype_contradicting_mixed_precision():
    assert "contradicts enable_mixed_precision" in key_error(GPU, dtype="float32", enable_mixed_precision=True)
    assert from_keys(GPU, dtype="bfloat16", enable_mixed_precision=True).dtype == "bfloat16"


def test_flash_attention_needs_cuda_and_ampere():
    assert "needs a CUDA GPU" in error(attention_impl="flash")
    assert "needs a CUDA GPU" in key_error(enable_flash_attention=True)
    assert "SM >= 8" in error(OLD_GPU, attention_impl="flash")
    assert from_keys(GPU, attention_impl="flash", enable_flash_attention=True).attention_impl == "flash"
    assert from_keys(GPU, enable_flash_attention=True).attention_impl == "flash"


def test_flash_flag_contradicting_attention_impl():
    assert "contradicts attention_impl='sdpa'" in key_error(GPU, enable_flash_attention=True, attention_impl="sdpa")


def test_tensor_parallel_group_may_span_the_nodes_of_a_launch():
    four = HardwareInfo(gpus=(A100,) * 4, launch_nodes=2)
    assert make(four, device="cuda", tensor_parallel_size=8).tensor_parallel_size == 8
    assert "needs 16 GPUs, but 8 are present" in error(four, device="cuda", tensor_parallel_size=16)


def test_tensor_parallel_size_vs_devices():
    assert "needs 2 GPUs, but 1 is present" in error(GPU, tensor_parallel_size=2)
    c = make(CPU, tensor_parallel_size=2)  # gloo on CPU, for testing
    assert any("gloo" in w for w in c.warnings)


def test_cuda_device_or_pool_without_cuda():
    assert "no CUDA GPU" in error(device="cuda")
    assert "pool_device='cuda'" in error(pool_device="cuda")
    make(GPU, pool_device="cuda", enable_memory_pooling=True)


def test_cuda_only_knobs_on_cpu_warn_and_are_accepted():
    with pytest.warns(ConfigWarning) as record:
        c = Config(hardware=CPU, allow_tf32=True, cudnn_benchmark=True)
    assert [str(w.message) for w in record] == c.warnings
    assert "allow_tf32=true does nothing on cpu" in c.warnings[0]
    assert "cudnn_benchmark=true does nothing" in c.warnings[1]
    assert make(GPU, allow_tf32=True).warnings == []


def test_error_records_the_fields_it_is_about():
    with pytest.raises(ConfigError) as e:
        make(CPU, quantization_method="bnb-8bit")
    assert "quantization_method" in e.value.fields


def test_this_machine_validates():
    Config(hardware=detect())  # validates against this machine without raising


def test_step_budget_defaults_per_device_and_covers_max_num_seqs():
    from medvllm.config import DEFAULT_BATCHED_TOKENS

    assert Config(hardware=CPU, device="cpu").max_num_batched_tokens == DEFAULT_BATCHED_TOKENS["cpu"] == 2048
    assert Config(hardware=CPU, device="cpu", max_num_seqs=4096).max_num_batched_tokens == 4096
    assert Config(hardware=CPU, device="cpu", max_num_batched_tokens=512).max_num_batched_tokens == 512


def test_mixed_prompt_budget_defaults_per_device_within_the_step_budget():
    from medvllm.config import DEFAULT_MIXED_PROMPT_TOKENS

    assert Config(hardware=CPU, device="cpu").mixed_prompt_tokens == DEFAULT_MIXED_PROMPT_TOKENS["cpu"] == 64
    small = Config(hardware=CPU, device="cpu", max_num_batched_tokens=32, max_num_seqs=32)
    assert small.mixed_prompt_tokens == 32 and small.derived == {"mixed_prompt_tokens": "max_num_batched_tokens"}
    assert Config(hardware=CPU, device="cpu", mixed_prompt_tokens=0).mixed_prompt_tokens == 0  # no mixing
    assert Config(hardware=CPU, device="cpu").scheduling_policy == "fcfs"
    for bad in (-1, 1.5, "64", True):
        assert "mixed_prompt_tokens" in error(mixed_prompt_tokens=bad)
    assert "fcfs, priority" in error(scheduling_policy="urgent")


def test_memory_efficient_lowers_the_cpu_defaults_but_not_explicit_values():
    from medvllm.config import DEFAULT_KV_SPACE_GIB, MEMORY_EFFICIENT_BATCHED_TOKENS

    lean = Config(hardware=CPU, device="cpu", memory_efficient=True)
    assert (lean.kv_cache_space_gib, lean.max_num_batched_tokens) == (DEFAULT_KV_SPACE_GIB[True], 1024)
    assert MEMORY_EFFICIENT_BATCHED_TOKENS == 1024 and DEFAULT_KV_SPACE_GIB == {False: 1.0, True: 0.4}
    assert Config(hardware=CPU, device="cpu").kv_cache_space_gib == 1.0
    given = Config(
        hardware=CPU, device="cpu", memory_efficient=True, kv_cache_space_gib=2.0, max_num_batched_tokens=4096
    )
    assert (given.kv_cache_space_gib, given.max_num_batched_tokens) == (2.0, 4096)


def test_fields_memory_efficient_chose_say_so():
    lean = Config(hardware=CPU, device="cpu", memory_efficient=True)
    assert lean.derived == {
        "max_num_batched_tokens": "memory_efficient",
        "kv_cache_space_gib": "memory_efficient",
        "kv_cache_dtype": "memory_efficient",
    }
    assert (
        Config(
            hardware=CPU,
            device="cpu",
            memory_efficient=True,
            kv_cache_dtype="float32",
            kv_cache_space_gib=1.0,
            max_num_batched_tokens=2048,
        ).derived
        == {}
    )
    assert Config(hardware=CPU, device="cpu").derived == {}
