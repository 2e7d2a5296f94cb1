"""The comparison's own KV pool is a fixed number of tokens, whatever block size the profile uses."""

import dataclasses

from medvllm.hardware import GPUInfo, HardwareInfo
from medvllm.quality import engines

CPU = HardwareInfo(cpu_count=8, total_memory=32 << 30, available_memory=30 << 30)
GPU = dataclasses.replace(CPU, gpus=(GPUInfo("A100", (8, 0), 80 << 30),))


def _tokens(config) -> int:
    return config.num_kvcache_blocks * config.kvcache_block_size


def test_the_pool_holds_the_same_tokens_at_any_block_size():
    small = engines.resolve_side({}, "none", {}, CPU)
    flash = engines.resolve_side({}, "onprem_gpu_bf16_flash", {}, GPU)
    assert flash.config.kvcache_block_size > small.config.kvcache_block_size
    assert _tokens(small.config) == _tokens(flash.config) == engines.KV_TOKENS
    assert flash.sources["num_kvcache_blocks"] == engines.SOURCE and "num_kvcache_blocks" not in flash.given


def test_a_given_pool_is_kept():
    r = engines.resolve_side({"num_kvcache_blocks": 7}, "none", {}, CPU)
    assert r.config.num_kvcache_blocks == 7 and r.sources["num_kvcache_blocks"] == "cli"
