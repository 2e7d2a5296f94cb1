"""Memory pooling: the KV cache is one allocation, committed at start on the pool device, and a long
decode run maps in no new memory (RSS flat within 2% over 1,000 decode steps on a tiny model)."""
from __future__ import annotations

import os

import pytest
import torch
import transformers

from medvllm import SamplingParams
from medvllm.config import Config
from medvllm.engine.llm_engine import LLMEngine
from medvllm.errors import ConfigError

STEPS = 1000
IN_FLIGHT = 16


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def wide_tiny(tmp_path_factory):
    """A tiny Llama with a wide KV (4 KiB per token) so that cache pages show up in RSS."""
    from tiny_models import BASE, tiny_tokenizer
    folder = tmp_path_factory.mktemp("wide_tiny")
    config = transformers.LlamaConfig(**dict(BASE, hidden_size=256, num_attention_heads=8, num_key_value_heads=8,
                                             intermediate_size=256, max_position_embeddings=2048))
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def _engine(path: str, pooling: bool) -> LLMEngine:
    return LLMEngine(Config(model=path, device="cpu", enable_memory_pooling=pooling, num_kvcache_blocks=4096,
                            max_model_len=512, max_num_seqs=IN_FLIGHT, max_num_batched_tokens=2048,
                            enable_prefix_caching=False))


def _decode_rss(engine: LLMEngine, steps: int = STEPS) -> list[int]:
    """RSS after every decode step of `steps`, keeping IN_FLIGHT requests of fresh prompts running."""
    params = SamplingParams(max_tokens=200, temperature=0, ignore_eos=True)
    n = 0

    def add():
        nonlocal n
        engine.add_request([2 + (n * 7 + i) % 250 for i in range(8)], params)
        n += 1

    for _ in range(IN_FLIGHT):
        add()
    samples, decode_steps = [], 0
    while decode_steps < steps:
        prefill = bool(engine.scheduler.waiting)
        for out in engine.step():
            if out.finished:
                add()
        if not prefill:
            decode_steps += 1
            samples.append(_rss())
    return samples


def test_pool_is_one_committed_allocation(wide_tiny):
    engine = _engine(wide_tiny, pooling=True)
    cache = engine.runner.kv_cache
    first = engine.runner.model.model.layers[0].self_attn.attn
    assert first.k_cache.untyped_storage().data_ptr() == cache.untyped_storage().data_ptr()
    assert cache.untyped_storage().nbytes() == cache.numel() * cache.element_size()


def _growth(samples: list[int]) -> float:
    """RSS at the end over RSS at the start of the steady state (after the first batch has run every
    kernel once); medians of 100 samples, so one step's transient buffer is not mistaken for growth."""
    import statistics
    return statistics.median(samples[-100:]) / statistics.median(samples[50:150])


def _measure(path: str, pooling: bool) -> tuple[list[int], int]:
    engine = _engine(path, pooling)
    return _decode_rss(engine), engine.stats()["generated_tokens"]


def _measure_in_fresh_process(path: str, pooling: bool) -> tuple[list[int], int]:
    """RSS of a process holding only this engine: in the test process, memory left by earlier tests
    would dwarf the KV pages (and could be freed mid-run), hiding what the test looks for."""
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (path, pooling))


def test_rss_flat_over_1000_decode_steps(wide_tiny):
    samples, generated = _measure_in_fresh_process(wide_tiny, pooling=True)
    assert _growth(samples) <= 1.02, _growth(samples)
    assert generated >= STEPS * IN_FLIGHT


def test_without_pooling_the_cache_maps_in_as_it_fills(wide_tiny):
    """The control: the same run without the pool grows by the KV pages it writes, so the test above
    would see a missing or lazy pool."""
    samples, _ = _measure_in_fresh_process(wide_tiny, pooling=False)
    assert _growth(samples) > 1.02, _growth(samples)


def test_pool_device_must_be_the_model_device():
    from medvllm.engine.memory_pool import pool_device
    config = Config(device="cpu", enable_memory_pooling=True)
    assert pool_device(config, torch.device("cpu")) == torch.device("cpu")
    config.pool_device = "cuda"  # what a CUDA-pooled profile says, seen by a CPU run
    with pytest.raises(ConfigError, match="pool_device='cuda' but the model runs on cpu"):
        pool_device(config, torch.device("cpu"))
