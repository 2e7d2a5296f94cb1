"""The native CPU paged-attention kernel against attention written out in plain PyTorch."""

from __future__ import annotations

import pytest
import torch

from medvllm.backends.cpu.attention import native_kernel, paged_attention
from medvllm.backends.cpu.native.build import NativeUnavailable


@pytest.fixture(scope="module")
def kernel():
    try:
        return native_kernel()
    except NativeUnavailable as e:  # a machine without gcc: the engine then runs SDPA only
        pytest.skip(f"native kernel unavailable: {e}")


def reference(q, k_cache, v_cache, tables, rows, positions, scale, window):
    """Token t attends to positions [max(0, pos - window + 1), pos] of its row's blocks, in float64."""
    block_size = k_cache.shape[1]
    heads, kv_heads = q.shape[1], k_cache.shape[2]
    out = torch.empty(q.shape, dtype=torch.float64)
    for t in range(q.shape[0]):
        pos = int(positions[t])
        first = max(0, pos - window + 1) if window else 0
        slots = torch.arange(first, pos + 1)
        blocks = tables[rows[t]][slots // block_size]
        keys = k_cache[blocks, slots % block_size].double()  # [n, Hkv, D]
        values = v_cache[blocks, slots % block_size].double()
        keys = keys.repeat_interleave(heads // kv_heads, dim=1)
        values = values.repeat_interleave(heads // kv_heads, dim=1)
        scores = torch.einsum("hd,nhd->hn", q[t].double(), keys) * scale
        out[t] = torch.einsum("hn,nhd->hd", scores.softmax(-1), values)
    return out


def random_case(num_rows, max_blocks, heads, kv_heads, dim, block_size=16, num_blocks=96, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    k_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    v_cache = torch.randn(num_blocks, block_size, kv_heads, dim, generator=g).to(dtype)
    tables = torch.stack([torch.randperm(num_blocks, generator=g)[:max_blocks] for _ in range(num_rows)])
    return k_cache, v_cache, tables, g


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [1, 3, 16])  # fewer tokens than threads splits the heads
@pytest.mark.parametrize("heads,kv_heads,dim", [(4, 2, 16), (9, 3, 64), (4, 4, 32), (8, 1, 8)])
def test_decode_matches_reference(kernel, dtype, num_rows, heads, kv_heads, dim):
    k_cache, v_cache, tables, g = random_case(num_rows, 5, heads, kv_heads, dim, dtype=dtype)
    positions = torch.randint(0, 5 * 16, (num_rows,), generator=g)  # any fill of the last block
    rows = torch.arange(num_rows)
    q = torch.randn(num_rows, heads, dim, generator=g).to(dtype)
    out = paged_attention(kernel, q, k_cache, v_cache, tables, rows, positions, dim**-0.5, None)
    ref = reference(q, k_cache, v_cache, tables, rows, positions, dim**-0.5, None)
    assert out.dtype == dtype and out.shape == q.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: rounding of the output alone
    torch.testing.assert_close(out.double(), ref, atol=tol, rtol=tol)


@pytest.mark.parametrize("window", [None, 1, 7, 40])
def test_many_queries_per_row_with_sliding_window(kernel, window):
    """Several tokens of one sequence (a prefill), each at its own position, with or without a window."""
    k_cache, v_cache, tables, g = random_case(2, 4, 6, 2, 16)
    rows = torch.tensor([0] * 30 + [1] * 11)
    positions = torch.cat([torch.arange(34, 64), torch.arange(0, 11)])
    q = torch.randn(len(rows), 6, 16, generator=g)
    out = paged_attention(kernel, q, k_cache, v_cache, tables, rows, positions, 0.3, window)
    ref = reference(q, k_cache, v_cache, tables, rows, positions, 0.3, window)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_result_of_a_token_does_not_depend_on_the_batch(kernel):
    k_cache, v_cache, tables, g = random_case(8, 6, 9, 3, 64)
    positions = torch.randint(0, 6 * 16, (8,), generator=g)
    q = torch.randn(8, 9, 64, generator=g)
    rows = torch.arange(8)
    batched = paged_attention(kernel, q, k_cache, v_cache, tables, rows, positions, 0.125, None)
    for t in range(8):
        alone = paged_attention(
            kernel, q[t : t + 1], k_cache, v_cache, tables, rows[t : t + 1], positions[t : t + 1], 0.125, None
        )
        assert torch.equal(alone[0], batched[t])


def test_refuses_other_cache_dtypes(kernel):
    k_cache, v_cache, tables, _ = random_case(1, 1, 2, 2, 8, dtype=torch.float16)
    with pytest.raises(TypeError, match="float32 or bfloat16"):
        paged_attention(
            kernel,
            torch.zeros(1, 2, 8),
            k_cache,
            v_cache,
            tables,
            torch.zeros(1, dtype=torch.long),
            torch.zeros(1, dtype=torch.long),
            1.0,
            None,
        )


def test_build_failure_is_reported_not_raised_into_the_engine(monkeypatch, tmp_path):
    from medvllm.backends.cpu.native import build
    from medvllm.backends.select import ModelTraits, select_backends
    from medvllm.config import Config
    from medvllm.hardware import detect

    build._library.cache_clear()
    monkeypatch.setenv("MEDVLLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    try:
        with pytest.raises(NativeUnavailable, match="cannot run"):
            build.load("paged_attention")
        chosen = select_backends(Config(device="cpu", hardware=detect()), ModelTraits(hidden_size=64, head_dim=16))
        assert chosen.attention == "sdpa" and "cannot run" in chosen.reasons["attention"]
    finally:
        build._library.cache_clear()


@pytest.mark.parametrize("arch", ["llama", "mistral"])  # mistral: a sliding window shorter than the prompts
def test_prompt_steps_on_the_kernel_match_sdpa_in_the_engine(kernel, tmp_path, monkeypatch, arch):
    # prompt steps with short contexts attend through the kernel, longer ones through SDPA: the same
    # logits either way, chunked prompts and prefix-cache hits included
    from medvllm import LLM, SamplingParams
    from medvllm.backends.cpu import attention as cpu_attention
    from tests.engine_probe import LogitsRecorder
    from tests.tiny_models import build_tiny

    build_tiny(arch, tmp_path)
    llm = LLM(
        str(tmp_path),
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        max_num_batched_tokens=24,
        max_num_seqs=4,
        enable_prefix_caching=True,
    )
    assert llm.runtime_info()["attention_backend"] == "cpu-paged"
    llm.engine.runner.model.model.fused_layers = None  # the layer-by-layer path, where the backend decides
    g = torch.Generator().manual_seed(3)
    shared = torch.randint(3, 256, (32,), generator=g).tolist()
    prompts = [shared + torch.randint(3, 256, (n,), generator=g).tolist() for n in (3, 17, 30)]

    plan = cpu_attention._token_rows_and_positions

    def run(limit):
        monkeypatch.setattr(cpu_attention, "MAX_PROMPT_CONTEXT", limit)
        on_sdpa = []  # for each prompt step: whether it went to SDPA

        def recording(meta, tokens):
            step = plan(meta, tokens)
            if not meta.is_decode:
                on_sdpa.append(step is cpu_attention._SDPA)
            return step

        monkeypatch.setattr(cpu_attention, "_token_rows_and_positions", recording)
        recorder = LogitsRecorder(llm.engine)
        outs = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=4, ignore_eos=True))
        return on_sdpa, [recorder.logits_of(o.request_id) for o in outs]

    kernel_paths, kernel_logits = run(10_000)
    sdpa_paths, sdpa_logits = run(0)
    assert kernel_paths and not any(kernel_paths) and all(sdpa_paths)
    for a, b in zip(kernel_logits, sdpa_logits):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
