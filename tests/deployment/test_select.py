"""Auto-selection with fake hardware: each branch of the spec's table, the memory-fit step, the shared check."""

import dataclasses

import pytest

from medvllm.deployment import ModelInfo, check, profiles, select
from medvllm.deployment.memory import estimate
from medvllm.deployment.merge import build
from medvllm.hardware import GPUInfo, HardwareInfo

GIB = 2**30
CPU = HardwareInfo(cpu_count=8, total_memory=32 * GIB, available_memory=30 * GIB)


def gpus(n, sm=(8, 0), mem=80, bnb=True, **kw):
    return dataclasses.replace(CPU, gpus=(GPUInfo("GPU", sm, mem * GIB),) * n, backends={"bitsandbytes": bnb}, **kw)


LLAMA_7B = ModelInfo.from_hf_config(
    {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "intermediate_size": 11008,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    name="llama-7b",
)
LLAMA_70B = ModelInfo.from_hf_config(
    {
        "hidden_size": 8192,
        "num_hidden_layers": 80,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 28672,
        "vocab_size": 32000,
        "max_position_embeddings": 4096,
    },
    name="llama-70b",
)


def pick(hw, model=None, env=None, overrides=None):
    s = select(hw, env or {}, model, overrides)
    return (s.profile.name if s.profile else None), s.reasons


def test_parameter_count_of_known_models():
    assert 6.6e9 < LLAMA_7B.num_params < 6.9e9  # Llama-2-7B: 6.74B
    assert 68e9 < LLAMA_70B.num_params < 70e9  # Llama-2-70B: 68.98B


@pytest.mark.parametrize(
    "hw,expected",
    [
        (CPU, "edge_cpu_int8"),
        (gpus(4), "cloud_gpu_tp4_fp16"),
        (gpus(8, sm=(9, 0)), "cloud_gpu_tp4_fp16"),
        (gpus(1, sm=(8, 6), mem=24), "onprem_gpu_bf16_flash"),
        (gpus(2, sm=(9, 0)), "onprem_gpu_bf16_flash"),
        (gpus(1, sm=(7, 5), mem=8), "gpu_4bit"),
        (gpus(1, sm=(7, 0), mem=16), "gpu_8bit"),
    ],
)
def test_each_branch_of_the_table(hw, expected):
    name, reasons = pick(hw)
    assert name == expected and reasons[-1].startswith(f"{expected}: chosen")


def test_no_cuda_falls_back_to_cpu_when_edge_is_missing(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    (shipped / "cpu.json").write_text((profiles.shipped_dir() / "cpu.json").read_text())
    monkeypatch.setattr(profiles, "shipped_dir", lambda: shipped)
    name, reasons = pick(CPU)
    assert name == "cpu" and "edge_cpu_int8: skipped, not available" in reasons[0]


def test_a_user_folder_profile_of_the_same_name_is_what_auto_selection_uses(tmp_path):
    (tmp_path / "edge_cpu_int8.json").write_text('{"engine": {"device": "cpu", "max_num_seqs": 8}}')
    s = select(CPU, {profiles.PROFILES_DIR_ENV: str(tmp_path)})
    assert s.profile.origin == "user" and s.profile.engine["max_num_seqs"] == 8


def test_a_candidate_that_cannot_run_is_skipped_with_the_reason():
    name, reasons = pick(gpus(1, sm=(7, 0), mem=16, bnb=False))  # no bitsandbytes: neither gpu profile runs
    assert name is None
    assert "gpu_8bit: skipped" in reasons[0] and "pip install bitsandbytes" in reasons[0]
    assert reasons[-1] == "no candidate profile can run here: using Config defaults"


def test_an_unimplemented_quantization_method_is_skipped():
    name, reasons = pick(dataclasses.replace(CPU, quantization_methods=frozenset()))
    assert name is None and "not implemented by this version of the engine" in reasons[0]
    assert pick(dataclasses.replace(CPU, quantization_methods=frozenset({"dynamic"})))[0] == "edge_cpu_int8"


def test_memory_fit_moves_an_8gb_ampere_card_with_a_7b_model_to_4bit():
    hw = gpus(1, sm=(8, 6), mem=8)
    assert pick(hw)[0] == "onprem_gpu_bf16_flash"  # the table alone
    name, reasons = pick(hw, LLAMA_7B)
    assert name == "gpu_4bit"
    assert reasons[0].startswith("onprem_gpu_bf16_flash: skipped") and "does not fit" in reasons[0]
    assert "fits in" in reasons[1]


def test_memory_fit_on_a_large_card_keeps_the_table_choice():
    assert pick(gpus(1, sm=(8, 0), mem=80), LLAMA_7B)[0] == "onprem_gpu_bf16_flash"


def test_memory_fit_falls_through_8bit_to_4bit_on_a_pre_ampere_card():
    # 7B at 8 bits needs ~7.7 GiB; a 12 GiB SM 7.5 card at 0.9 utilization has 10.8: fits. A 70B does not.
    assert pick(gpus(1, sm=(7, 5), mem=12), LLAMA_7B)[0] == "gpu_8bit"
    name, reasons = pick(gpus(1, sm=(7, 5), mem=48), LLAMA_70B)
    assert name == "gpu_4bit" and "gpu_8bit: skipped" in reasons[0]


def test_nothing_fits_means_defaults():
    name, reasons = pick(dataclasses.replace(CPU, available_memory=2 * GIB), LLAMA_7B)
    assert name is None and all("does not fit" in r for r in reasons[:2])


def test_four_gpus_too_small_for_tp4_fall_back_to_one_gpu_profiles():
    name, reasons = pick(gpus(4, sm=(8, 0), mem=16), LLAMA_70B)
    assert reasons[0].startswith("cloud_gpu_tp4_fp16: skipped") and name is None


def test_pinning_the_cpu_selects_among_cpu_profiles():
    assert pick(gpus(1), overrides={"device": "cpu"})[0] == "edge_cpu_int8"


def test_overrides_take_part_in_the_check():
    name, reasons = pick(CPU, overrides={"max_num_seqs": 0})
    assert name is None and "max_num_seqs=0" in reasons[0]


def test_check_is_the_same_test_for_every_profile():
    v = check(profiles.load("gpu_8bit", {}), CPU)
    assert not v.runnable and "no CUDA GPU" in v.reasons[0]
    v = check(profiles.load("cpu", {}), CPU, LLAMA_7B)
    assert v.runnable and v.fit.fits and "llama-7b needs ~" in v.reasons[0]


def test_estimate_scales_with_precision_and_tensor_parallelism():
    hw = gpus(4)
    fp32 = estimate(build({}, hw), LLAMA_7B, hw).needed
    bf16 = estimate(build({"enable_mixed_precision": True}, hw), LLAMA_7B, hw).needed
    nf4 = estimate(build({"quantization_method": "bnb-nf4"}, hw), LLAMA_7B, hw).needed
    tp4 = estimate(build({"tensor_parallel_size": 4}, hw), LLAMA_7B, hw).needed
    assert fp32 > bf16 > nf4 and abs(fp32 / tp4 - 4) < 0.01
    assert 25 * GIB < fp32 < 32 * GIB


def test_a_quantized_gguf_model_on_cpu_runs_at_its_own_quantization():
    cpu = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
    q4 = dataclasses.replace(LLAMA_7B, file_bytes=4_100_000_000, quant_type="Q4_K")
    name, reasons = pick(cpu, q4)
    assert name == "cpu_gguf" and "a quantized GGUF model" in reasons[0]
    assert pick(cpu, LLAMA_7B)[0] == "edge_cpu_int8"  # float weights (a folder, an F16 file): int8
    assert pick(gpus(1, sm=(8, 0), mem=80), q4)[0] == "onprem_gpu_bf16_flash"  # a GPU: its table
    # the file's size is what the method holds, not 4 bytes a parameter
    config = build({"quantization_method": "gguf"}, cpu)
    assert estimate(config, q4, cpu).needed < 1.3 * q4.file_bytes + (2 << 30)
