"""resolve(): each precedence rule, provenance of every field, paired fields, and errors that blame a profile."""

import dataclasses
import json

import pytest
import torch

from medvllm.deployment import PROFILE_ENV, ModelInfo, resolve
from medvllm.errors import ConfigError, ProfileError
from medvllm.hardware import GPUInfo, HardwareInfo

GIB = 2**30
CPU = HardwareInfo(cpu_count=8, total_memory=32 * GIB, available_memory=30 * GIB)
GPU = dataclasses.replace(CPU, gpus=(GPUInfo("A100", (8, 0), 80 * GIB),), backends={"bitsandbytes": True})
T4 = dataclasses.replace(GPU, gpus=(GPUInfo("T4", (7, 5), 16 * GIB),))


def non_default(r):
    return {k: v for k, v in r.sources.items() if v != "default"}


def test_defaults_only_when_profiles_are_disabled():
    r = resolve({}, "none", {}, GPU)
    assert (r.profile_name, r.how_chosen, non_default(r)) == (None, "none", {})
    assert "--deployment-profile none" in r.reasons[0]


def test_env_none_disables_auto_selection_too():
    r = resolve({}, None, {PROFILE_ENV: "none"}, CPU)
    assert r.how_chosen == "none" and r.profile_name is None and f"{PROFILE_ENV}=none" in r.reasons[0]


def test_auto_selection_fills_fields_with_auto_source():
    r = resolve({}, None, {}, CPU)
    assert (r.profile_name, r.how_chosen) == ("edge_cpu_int8", "auto")
    assert r.sources["quantization_method"] == "auto:edge_cpu_int8" and r.config.quantization_method == "dynamic"
    assert r.sources["max_num_seqs"] == "default" and "chosen" in r.reasons[-1]


def test_settings_say_which_automatic_values_memory_efficient_chose():
    settings = resolve({}, None, {}, CPU).settings()  # edge_cpu_int8 names memory_efficient
    assert settings["memory_efficient"] == {"value": True, "source": "auto:edge_cpu_int8"}
    assert settings["kv_cache_space_gib"] == {"value": 0.4, "source": "default (memory_efficient)"}
    assert settings["kv_cache_dtype"] == {"value": "auto", "source": "default (memory_efficient)"}
    given = resolve({"kv_cache_space_gib": 2.0}, None, {}, CPU).settings()["kv_cache_space_gib"]
    assert given == {"value": 2.0, "source": "cli"}


def test_env_profile_beats_auto_selection():
    r = resolve({}, None, {PROFILE_ENV: "cpu"}, CPU)
    assert (r.profile_name, r.how_chosen) == ("cpu", "env")
    assert r.sources["device"] == "profile:cpu" and r.config.device == "cpu"


def test_flag_profile_beats_env_profile():
    r = resolve({}, "onprem_gpu_bf16_flash", {PROFILE_ENV: "gpu_8bit"}, GPU)
    assert (r.profile_name, r.how_chosen) == ("onprem_gpu_bf16_flash", "flag")
    assert r.config.quantization_method is None and r.config.dtype == "bfloat16"
    assert r.sources["dtype"] == r.sources["attention_impl"] == "profile:onprem_gpu_bf16_flash"


def test_explicit_overrides_beat_the_profile():
    r = resolve({"max_num_seqs": 4, "allow_tf32": False}, "onprem_gpu_bf16_flash", {}, GPU)
    assert r.config.max_num_seqs == 4 and r.sources["max_num_seqs"] == "cli"
    assert r.config.allow_tf32 is False and r.sources["allow_tf32"] == "cli"
    assert r.sources["attention_impl"] == "profile:onprem_gpu_bf16_flash"


def test_overrides_beat_auto_selection_which_fills_the_rest():
    r = resolve({"enable_memory_pooling": False}, None, {}, CPU)
    assert r.config.enable_memory_pooling is False and r.sources["enable_memory_pooling"] == "cli"
    assert r.sources["memory_efficient"] == "auto:edge_cpu_int8"


def test_every_field_has_a_source_and_settings_serialize():
    r = resolve({"model": "m"}, None, {}, CPU)
    settings = json.loads(json.dumps(r.to_dict()))["settings"]
    assert set(settings) == set(r.config.to_dict()) and settings["model"] == {"value": "m", "source": "cli"}


def test_profile_by_path(tmp_path):
    path = tmp_path / "site.json"
    path.write_text('{"profile": "site", "owner": "ward 3", "engine": {"device": "cpu", "max_num_seqs": 3}}')
    r = resolve({}, str(path), {}, GPU)
    assert r.profile_name == "site" and r.profile_path == str(path) and r.sources["max_num_seqs"] == "profile:site"
    assert any("unknown key(s) owner" in w for w in r.warnings)


def test_missing_profile_path_is_an_error_even_via_env():
    with pytest.raises(ProfileError, match="does not exist"):
        resolve({}, None, {PROFILE_ENV: "/nowhere/cpu.json"}, CPU)


def test_unknown_override_is_an_error():
    with pytest.raises(ConfigError, match="unknown setting"):
        resolve({"speculative": True}, None, {}, CPU)


def test_a_named_profile_that_cannot_run_is_refused_with_a_suggestion():
    with pytest.raises(ProfileError) as e:
        resolve({}, "gpu_8bit", {}, CPU)
    msg = str(e.value)
    assert "'gpu_8bit' cannot run on this machine" in msg and "no CUDA GPU" in msg
    assert "--deployment-profile edge_cpu_int8" in msg


def test_an_env_profile_that_cannot_run_says_where_it_came_from():
    with pytest.raises(ProfileError, match=f"from {PROFILE_ENV}"):
        resolve({}, None, {PROFILE_ENV: "onprem_gpu_bf16_flash"}, T4)


def test_a_bad_override_stays_a_config_error():
    with pytest.raises(ConfigError) as e:
        resolve({"quantization_method": "bnb-8bit"}, "cpu", {}, CPU)
    assert not isinstance(e.value, ProfileError) and "needs a CUDA GPU" in str(e.value)


def test_cuda_only_knobs_warn_on_cpu():
    r = resolve({"allow_tf32": True}, "none", {}, CPU)
    assert r.warnings == ["allow_tf32=true does nothing on cpu: it only affects CUDA"]


def test_quantization_method_override_brings_its_bits():
    r = resolve({"quantization_method": "bnb-8bit"}, "gpu_4bit", {}, GPU)
    assert (r.config.quantization_method, r.sources["quantization_method"]) == ("bnb-8bit", "cli")
    assert r.given == {"quantization_method": "bnb-8bit", "quantization_bits": 8}  # the bits followed
    r = resolve({"quantization_method": None}, "cpu", {}, CPU)
    assert (r.config.quantization_method, r.sources["quantization_method"]) == (None, "cli")


def test_quantization_bits_override_brings_a_matching_method():
    r = resolve({"quantization_bits": 4}, "gpu_8bit", {}, GPU)
    assert (r.config.quantization_method, r.sources["quantization_method"]) == ("bnb-nf4", "cli")
    r = resolve({"quantization_bits": None}, "cpu", {}, CPU)
    assert r.config.quantization_method is None


def test_both_quantization_fields_given_and_contradicting_is_an_error():
    with pytest.raises(ConfigError, match="does not match"):
        resolve({"quantization_bits": 4, "quantization_method": "dynamic"}, "cpu", {}, CPU)


def test_turning_flash_off_over_a_flash_profile_means_sdpa():
    r = resolve({"enable_flash_attention": False}, "onprem_gpu_bf16_flash", {}, GPU)
    assert (r.config.attention_impl, r.sources["attention_impl"]) == ("sdpa", "cli")
    r = resolve({"attention_impl": "sdpa"}, "onprem_gpu_bf16_flash", {}, GPU)
    assert (r.config.attention_impl, r.sources["attention_impl"]) == ("sdpa", "cli")
    assert r.given == {"attention_impl": "sdpa", "enable_flash_attention": False}  # the flag followed


def test_dtype_override_turns_off_the_profiles_mixed_precision():
    r = resolve({"dtype": "float32"}, "onprem_gpu_bf16_flash", {}, GPU)
    assert (r.config.dtype, r.sources["dtype"]) == ("float32", "cli")
    assert r.given == {"dtype": "float32", "enable_mixed_precision": False}
    r = resolve({"enable_mixed_precision": False}, "onprem_gpu_bf16_flash", {}, GPU)
    assert (r.config.dtype, r.config.torch_dtype, r.sources["dtype"]) == ("auto", torch.float32, "cli")


def test_profile_keys_translate_with_the_profiles_source():
    r = resolve({}, "cloud_gpu_tp4_fp16", {}, dataclasses.replace(GPU, gpus=GPU.gpus * 4))
    assert (r.config.dtype, r.sources["dtype"]) == ("float16", "profile:cloud_gpu_tp4_fp16")
    assert r.sources["attention_impl"] == "default" and r.given == {}
    r = resolve({"mixed_precision_dtype": "fp16"}, "onprem_gpu_bf16_flash", {}, GPU)
    assert (r.config.dtype, r.sources["dtype"]) == ("float16", "cli")
    r = resolve({}, "gpu_4bit", {}, GPU)
    assert (r.config.quantization_method, r.sources["quantization_method"]) == ("bnb-nf4", "profile:gpu_4bit")
    assert set(r.settings()) == set(r.config.to_dict()) and "quantization_bits" not in r.settings()


def test_api_keyword_arguments_may_use_the_profile_keys():
    r = resolve({"enable_mixed_precision": True, "mixed_precision_dtype": "bf16"}, "none", {}, GPU)
    assert (r.config.dtype, r.sources["dtype"]) == ("bfloat16", "cli")
    assert r.given == {"enable_mixed_precision": True, "mixed_precision_dtype": "bf16"}
    r = resolve(
        {"enable_flash_attention": True, "quantization_bits": 8, "quantization_method": "bnb-8bit"}, "none", {}, GPU
    )
    assert (r.config.attention_impl, r.config.quantization_method) == ("flash", "bnb-8bit")


def test_a_profile_keys_contradiction_blames_the_profile(tmp_path):
    path = tmp_path / "site.json"
    path.write_text('{"profile": "site", "engine": {"quantization_bits": 4, "quantization_method": "dynamic"}}')
    with pytest.raises(ProfileError, match="'site' cannot run on this machine: quantization_bits=4 does not match"):
        resolve({}, str(path), {}, CPU)


def test_explicit_profile_that_may_not_fit_warns():
    big = ModelInfo("big", num_params=40 * 10**9, num_layers=60, num_kv_heads=8, head_dim=128)
    r = resolve({}, "cpu", {}, CPU, model_info=big)
    assert any("does not fit" in w and "loading may fail" in w for w in r.warnings)


def test_resolve_is_pure():
    env = {PROFILE_ENV: "cpu"}
    a, b = resolve({"seed": 1}, None, env, CPU), resolve({"seed": 1}, None, env, CPU)
    assert a == b and env == {PROFILE_ENV: "cpu"}
