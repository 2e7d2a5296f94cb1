"""HardwareInfo: the snapshot's questions, its plain-data round trip, and detect() on this machine."""

import json

from medvllm.hardware import GPUInfo, HardwareInfo, detect


def test_cpu_only_snapshot():
    hw = HardwareInfo(cpu_count=4, total_memory=16 << 30)
    assert not hw.has_cuda and hw.num_gpus == 0 and hw.min_gpu_memory == 0 and hw.min_gpu_sm == 0
    assert not hw.cpu_native_bf16 and not hw.has_backend("bitsandbytes")
    assert "no CUDA GPU" in hw.summary()


def test_gpu_questions_use_the_weakest_device():
    hw = HardwareInfo(gpus=(GPUInfo("A", (8, 6), 24 << 30), GPUInfo("B", (7, 5), 16 << 30)))
    assert hw.has_cuda and hw.num_gpus == 2 and hw.min_gpu_sm == 7 and hw.min_gpu_memory == 16 << 30
    assert hw.cpu_only().gpus == () and hw.gpus  # the original is unchanged
    assert "2x A (SM 8.6, 24.0 GiB)" in hw.summary()


def test_native_bf16_flags():
    assert HardwareInfo(cpu_flags=frozenset({"amx_bf16"})).cpu_native_bf16
    assert HardwareInfo(cpu_flags=frozenset({"avx512_bf16"})).cpu_native_bf16
    assert not HardwareInfo(cpu_flags=frozenset({"avx2"})).cpu_native_bf16


def test_dict_round_trip_through_json():
    hw = HardwareInfo(
        cpu_count=2,
        cpu_model="x",
        cpu_flags=frozenset({"avx2"}),
        total_memory=8 << 30,
        available_memory=6 << 30,
        gpus=(GPUInfo("H100", (9, 0), 80 << 30),),
        backends={"bitsandbytes": True},
    )
    assert HardwareInfo.from_dict(json.loads(json.dumps(hw.to_dict()))) == hw


def test_detect_reads_this_machine_once():
    hw = detect()
    assert hw is detect()
    assert hw.cpu_count >= 1 and hw.total_memory > 0 and 0 < hw.available_memory <= hw.total_memory
    assert set(hw.backends) == {"bitsandbytes", "flash_attn"}
    import torch

    assert hw.has_cuda == torch.cuda.is_available()


def test_the_probe_lists_what_the_engine_implements_without_importing_it():
    from medvllm import quantization
    from medvllm.config import QUANT_METHOD_BITS
    from medvllm.hardware import ENGINE_QUANTIZATION_METHODS

    assert ENGINE_QUANTIZATION_METHODS == set(quantization.METHODS) == set(QUANT_METHOD_BITS)
    assert detect().quantization_methods == ENGINE_QUANTIZATION_METHODS
