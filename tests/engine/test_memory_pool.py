"""Memory pooling: the KV cache is one allocation, committed at start on the pool device, and a long
decode run maps in no new memory (RSS flat within 2% over 1,000 decode steps on a tiny model).
Without pooling, a CPU cache holds in memory only the blocks the requests have needed at once."""

from __future__ import annotations

import os

import pytest
import torch
import transformers

from medvllm import SamplingParams
from medvllm.config import Config
from medvllm.engine.llm_engine import LLMEngine
from medvllm.errors import ConfigError
from medvllm.hardware import detect

STEPS = 1000
IN_FLIGHT = 16
POOL_BLOCKS = 4096
KV_BYTES_PER_TOKEN = 2 * 2 * 8 * 32 * 4  # k and v, 2 layers, 8 KV heads of 32, float32


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture(scope="module")
def wide_tiny(tmp_path_factory):
    """A tiny Llama with a wide KV (4 KiB per token) so that cache pages show up in RSS."""
    from tests.tiny_models import BASE, tiny_tokenizer

    folder = tmp_path_factory.mktemp("wide_tiny")
    config = transformers.LlamaConfig(
        **dict(
            BASE,
            hidden_size=256,
            num_attention_heads=8,
            num_key_value_heads=8,
            intermediate_size=256,
            max_position_embeddings=2048,
        )
    )
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return str(folder)


def _engine(path: str, pooling: bool) -> LLMEngine:
    return LLMEngine(
        Config(
            model=path,
            device="cpu",
            enable_memory_pooling=pooling,
            num_kvcache_blocks=POOL_BLOCKS,
            hardware=detect(),
            max_model_len=512,
            max_num_seqs=IN_FLIGHT,
            max_num_batched_tokens=2048,
            enable_prefix_caching=False,
        )
    )


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


def _measure(path: str, pooling: bool) -> tuple[list[int], int, int]:
    engine = _engine(path, pooling)
    samples = _decode_rss(engine)
    stats = engine.stats()
    return samples, stats["generated_tokens"], stats["kv_blocks_used_ever"]


def _measure_in_fresh_process(path: str, pooling: bool) -> tuple[list[int], int, int]:
    """RSS of a process holding only this engine: in the test process, memory left by earlier tests
    would dwarf the KV pages (and could be freed mid-run), hiding what the test looks for."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_measure, (path, pooling))


@pytest.fixture(scope="module")
def runs(wide_tiny):
    """(RSS samples, tokens generated, blocks ever used) of the same run with and without the pool."""
    return {pooling: _measure_in_fresh_process(wide_tiny, pooling) for pooling in (True, False)}


def test_rss_flat_over_1000_decode_steps(runs):
    samples, generated, _ = runs[True]
    assert _growth(samples) <= 1.005, _growth(samples)
    assert generated >= STEPS * IN_FLIGHT


def test_without_pooling_the_cache_maps_in_as_it_fills(runs):
    """The control: the same run without the pool grows by the KV pages it writes, so the test above
    would see a missing or lazy pool."""
    samples, _, _ = runs[False]
    assert _growth(samples) > 1.005, _growth(samples)  # ~1.018 here: 4 KB pages, as blocks are written


def test_without_pooling_only_the_blocks_in_use_are_resident(runs):
    """Freed blocks are reused before untouched ones, so the unpooled cache stays at the peak the
    requests needed at once (16 requests of 208 tokens: 208 blocks of 4,096) instead of the limit."""
    pooled, _, _ = runs[True]
    unpooled, _, used_ever = runs[False]
    assert used_ever <= IN_FLIGHT * -(-(8 + 200) // 16) + IN_FLIGHT
    pool_bytes = POOL_BLOCKS * 16 * KV_BYTES_PER_TOKEN
    unused_bytes = (POOL_BLOCKS - used_ever) * 16 * KV_BYTES_PER_TOKEN
    saved = unpooled[-1] - pooled[-1]
    assert -saved > 0.9 * unused_bytes, (saved / 2**20, pool_bytes / 2**20)


def test_pool_device_must_be_the_model_device():
    from medvllm.engine.memory_pool import pool_device

    config = Config(hardware=detect(), device="cpu", enable_memory_pooling=True)
    assert pool_device(config, torch.device("cpu")) == torch.device("cpu")
    config.pool_device = "cuda"  # what a CUDA-pooled profile says, seen by a CPU run
    with pytest.raises(ConfigError, match="pool_device='cuda' but the model runs on cpu"):
        pool_device(config, torch.device("cpu"))


def test_a_pooled_cpu_cache_is_no_bigger_than_the_requests_can_fill(wide_tiny):
    """kv_cache_space_gib is the limit; a committed pool stops at max_num_seqs x max_model_len."""
    engine = LLMEngine(
        Config(
            model=wide_tiny,
            device="cpu",
            enable_memory_pooling=True,
            kv_cache_space_gib=1.0,
            hardware=detect(),
            max_model_len=100,
            max_num_seqs=3,
            max_num_batched_tokens=512,
        )
    )
    assert engine.runner.num_blocks == 3 * 7  # ceil(100 / 16) blocks per request
    unpooled = LLMEngine(
        Config(
            model=wide_tiny,
            device="cpu",
            kv_cache_space_gib=0.01,
            max_model_len=100,
            hardware=detect(),
            max_num_seqs=3,
            max_num_batched_tokens=512,
        )
    )
    assert unpooled.runner.num_blocks == int(0.01 * 2**30) // (16 * KV_BYTES_PER_TOKEN)  # the limit, mapped lazily


def test_glibc_is_left_alone_while_a_step_buffer_fits_its_own_threshold():
    """keep_freed_memory only raises glibc's mmap threshold for buffers beyond the 32 MiB it learns by
    itself (at 8,192-token steps); at the CPU default of 2,048 tokens it changes nothing."""
    from medvllm.engine.memory_pool import GLIBC_DYNAMIC_MMAP_MAX, keep_freed_memory, step_buffer_bytes

    default_model = transformers.LlamaConfig(hidden_size=576, intermediate_size=1536)
    assert step_buffer_bytes(default_model, 2048) == 2048 * 3072 * 4 <= GLIBC_DYNAMIC_MMAP_MAX
    assert step_buffer_bytes(default_model, 8192) > GLIBC_DYNAMIC_MMAP_MAX
    assert keep_freed_memory(step_buffer_bytes(default_model, 2048)) is False


def test_an_automatic_max_model_len_is_lowered_to_what_the_pool_holds(wide_tiny):
    with pytest.warns(UserWarning, match="max_model_len lowered from the model's 2048 to 320 tokens"):
        engine = LLMEngine(
            Config(model=wide_tiny, device="cpu", num_kvcache_blocks=20, max_num_seqs=4, hardware=detect())
        )
    assert engine.max_model_len == 320
    with pytest.raises(ConfigError, match="fewer than the 32 one request of max_model_len=512 needs"):
        LLMEngine(Config(hardware=detect(), model=wide_tiny, device="cpu", num_kvcache_blocks=20, max_model_len=512))


@pytest.mark.parametrize("memory_efficient", [True, False])
def test_a_memory_efficient_engine_returns_free_heap_pages_when_it_goes_idle(wide_tiny, monkeypatch, memory_efficient):
    import medvllm.engine.llm_engine as llm_engine

    engine = LLMEngine(
        Config(
            model=wide_tiny,
            device="cpu",
            memory_efficient=memory_efficient,
            max_model_len=128,
            hardware=detect(),
            num_kvcache_blocks=64,
        )
    )
    calls = []
    monkeypatch.setattr(llm_engine, "release_free_memory", lambda: calls.append(len(engine._seqs)))
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)
    engine.add_request([5, 6, 7], params)
    engine.add_request([8, 9, 10, 11, 12], SamplingParams(max_tokens=6, temperature=0, ignore_eos=True))
    while engine.has_unfinished_requests():
        engine.step()
    assert calls == ([0] if memory_efficient else [])  # once, and only with nothing left to run
