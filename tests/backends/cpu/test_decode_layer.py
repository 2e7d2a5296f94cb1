"""The fused native decode layer (backends/cpu/decode_layer.py) computes what the layer-by-layer PyTorch
path computes: same logits at every decode step, same greedy tokens, for each architecture it covers
and both KV cache dtypes it reads; it stands aside where it does not apply."""

from __future__ import annotations

import pytest
import torch

from medvllm import LLM, SamplingParams
from medvllm.backends.cpu.native.build import NativeUnavailable, load
from tests.engine_probe import LogitsRecorder
from tests.tiny_models import build_tiny


def _builds() -> bool:
    try:
        load("decode_layer")
        return True
    except NativeUnavailable:
        return False


pytestmark = pytest.mark.skipif(not _builds(), reason="no C compiler")


def _prompts():
    g = torch.Generator().manual_seed(7)
    return [torch.randint(3, 256, (n,), generator=g).tolist() for n in (5, 19, 33, 40)]


def _run(llm):
    recorder = LogitsRecorder(llm.engine)
    outs = llm.generate(_prompts(), SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))
    return [o.outputs[0].token_ids for o in outs], [recorder.logits_of(o.request_id) for o in outs]


# mistral: a sliding window (12) shorter than the contexts; qwen2: a QKV bias; llama: tied embeddings
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
@pytest.mark.parametrize("kv_dtype", ["auto", "bfloat16"])
def test_fused_decode_matches_the_layer_by_layer_path(tmp_path, arch, kv_dtype):
    build_tiny(arch, tmp_path)
    llm = LLM(
        str(tmp_path),
        quantization_method="dynamic",
        kv_cache_dtype=kv_dtype,
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
    )
    assert llm.runtime_info()["decode_layer"] == "native"
    fused_tokens, fused_logits = _run(llm)
    llm.engine.runner.model.model.fused_layers = None  # the PyTorch path, same weights and engine
    tokens, logits = _run(llm)
    assert fused_tokens == tokens
    for a, b in zip(fused_logits, logits):
        assert a.shape == b.shape == (12, a.shape[1])
        assert (a - b).abs().max().item() < 1e-4


def test_fused_decode_stands_aside_where_it_does_not_apply(tmp_path):
    build_tiny("qwen3", tmp_path / "qwen3")  # q/k norms
    assert (
        LLM(
            str(tmp_path / "qwen3"), quantization_method="dynamic", num_kvcache_blocks=64, max_model_len=256
        ).runtime_info()["decode_layer"]
        == "torch"
    )
    assert (
        LLM(str(tmp_path / "qwen3"), num_kvcache_blocks=64, max_model_len=256).runtime_info()["decode_layer"] == "torch"
    )


# float32 Linears (packed panels): the fused layer takes the prompt step of 20 prompts and every decode
# step, 20 tokens down to a few as requests finish
@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_fused_float32_decode_matches_the_layer_by_layer_path(tmp_path, arch):
    import medvllm.backends.cpu.decode_layer as fused

    build_tiny(arch, tmp_path)
    llm = LLM(str(tmp_path), kvcache_block_size=16, num_kvcache_blocks=128, max_model_len=256)
    assert llm.runtime_info()["decode_layer"] == "native"
    assert llm.engine.runner.model.model.layers[0].mlp.gate_up_proj.method.name == "float-panels"  # read by both
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 256, (int(n),), generator=g).tolist() for n in torch.randint(4, 40, (20,), generator=g)]
    lengths = [4 + i % 9 for i in range(20)]

    def run():
        recorder = LogitsRecorder(llm.engine)
        outs = llm.generate(prompts, [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in lengths])
        return [o.outputs[0].token_ids for o in outs], [recorder.logits_of(o.request_id) for o in outs]

    calls = []
    step = fused.FusedDecode.__call__
    fused.FusedDecode.__call__ = lambda self, *a: calls.append(a[0].shape[0]) or step(self, *a)
    try:
        fused_tokens, fused_logits = run()
    finally:
        fused.FusedDecode.__call__ = step
    assert max(calls) == sum(map(len, prompts)) and min(calls) <= 2
    llm.engine.runner.model.model.fused_layers = None
    tokens, logits = run()
    assert fused_tokens == tokens
    for a, b in zip(fused_logits, logits):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4


# prompt steps fused / those with a run of over 16 queries over a longer context on PyTorch's path
@pytest.mark.parametrize("prompt_limit", [10_000, 16])
@pytest.mark.parametrize("quantization", ["dynamic", None])  # int8 / float32 panels
def test_fused_prompt_steps_with_chunks_and_prefix_hits_match_the_layer_by_layer_path(
    tmp_path, monkeypatch, prompt_limit, quantization
):
    import medvllm.backends.cpu.attention as cpu_attention
    import medvllm.backends.cpu.decode_layer as fused

    monkeypatch.setattr(cpu_attention, "MAX_PROMPT_CONTEXT", prompt_limit)
    prompt_steps = []
    call = fused.FusedDecode.__call__

    def counting(self, hidden, positions, meta):
        prompt_steps.append(not meta.is_decode)
        return call(self, hidden, positions, meta)

    monkeypatch.setattr(fused.FusedDecode, "__call__", counting)
    build_tiny("llama", tmp_path)
    llm = LLM(
        str(tmp_path),
        quantization_method=quantization,
        kvcache_block_size=16,
        num_kvcache_blocks=64,
        max_model_len=256,
        max_num_batched_tokens=24,
        max_num_seqs=4,
        enable_prefix_caching=True,
    )
    shared = _prompts()[3][:32]  # two full blocks every prompt below starts with
    prompts = [shared + p for p in _prompts()]

    def run():
        recorder = LogitsRecorder(llm.engine)
        params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
        outs = llm.generate(prompts[:1], params)
        hits = llm.engine.scheduler.block_manager.num_cached_tokens_total
        outs += llm.generate(prompts[1:], params)  # their first two blocks come from the cache
        assert llm.engine.scheduler.block_manager.num_cached_tokens_total >= hits + 3 * 32
        return [o.outputs[0].token_ids for o in outs], [recorder.logits_of(o.request_id) for o in outs]

    fused_tokens, fused_logits = run()
    assert any(prompt_steps)  # some prompt chunks ran fused (all of them with the high limit)
    llm.engine.runner.model.model.fused_layers = None  # the PyTorch path, same weights and engine
    tokens, logits = run()
    assert fused_tokens == tokens
    for a, b in zip(fused_logits, logits):
        assert a.shape == b.shape and (a - b).abs().max().item() < 1e-4
