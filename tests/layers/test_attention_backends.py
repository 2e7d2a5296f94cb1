"""Attention backend selection and the flash backends' bookkeeping, checked on CPU.

The flash kernels themselves need CUDA (tests/backends/cuda/test_backends.py). Here the same backend code runs
with the kernel swapped for plain math: SDPA's MATH kernel for "sdpa-flash", and a float64 reference
varlen attention for "flash-attn". Both must give the tokens and logits of the default SDPA path,
through prefill, prefix-cache hits and decode of a batch with different context lengths.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvllm import SamplingParams
from medvllm.backends.cuda import flash_attention as fa
from medvllm.backends.select import ModelTraits, select_backends
from medvllm.config import Config
from medvllm.deployment.merge import build
from medvllm.engine.llm_engine import LLMEngine
from medvllm.errors import ConfigError
from medvllm.hardware import detect


def reference_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale,
    causal,
    window_size,
    block_table=None,
):
    """flash_attn_varlen_func's contract in float64: bottom-right causal, GQA, optional window/pages."""
    assert causal
    outs = []
    for i in range(len(cu_seqlens_q) - 1):
        qs, qe = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        n_k = int(cu_seqlens_k[i + 1] - cu_seqlens_k[i])
        if block_table is None:
            ki, vi = (
                k[int(cu_seqlens_k[i]) : int(cu_seqlens_k[i + 1])],
                v[int(cu_seqlens_k[i]) : int(cu_seqlens_k[i + 1])],
            )
        else:
            ki, vi = (c[block_table[i].long()].flatten(0, 1)[:n_k] for c in (k, v))
        n_q, groups = qe - qs, q.shape[1] // k.shape[-2]
        qi = q[qs:qe].double().transpose(0, 1)
        ki, vi = (t.double().repeat_interleave(groups, dim=1).transpose(0, 1) for t in (ki, vi))
        q_pos = torch.arange(n_k - n_q, n_k).unsqueeze(1)
        k_pos = torch.arange(n_k)
        mask = k_pos <= q_pos
        if window_size[0] >= 0:
            mask &= k_pos >= q_pos - window_size[0]
        outs.append(
            F.scaled_dot_product_attention(qi, ki, vi, attn_mask=mask, scale=softmax_scale).transpose(0, 1).to(q.dtype)
        )
    return torch.cat(outs)


class ReferenceFlashAttn(fa.FlashAttnBackend):
    def __init__(self):
        self.varlen = reference_varlen


def _engine(path, block_size=16):
    return LLMEngine(
        Config(
            model=path,
            device="cpu",
            num_kvcache_blocks=64 if block_size == 16 else 8,
            kvcache_block_size=block_size,
            max_model_len=256,
            max_num_batched_tokens=512,
            hardware=detect(),
        )
    )


def _install(engine, backend):
    engine.runner.model.model.fused_layers = None  # its own attention kernel would bypass the backend
    for module in engine.runner.model.modules():
        if hasattr(module, "k_cache") and hasattr(module, "sliding_window"):
            module.backend = backend


def _run(engine):
    """Tokens of a batch sharing a prefix (prefix-cache hits, mixed lengths), and teacher-forced logits."""
    prefix = [5 + i % 200 for i in range(40)]
    prompts = [prefix + [7, 9], prefix + [11], [3, 4, 5, 6, 7]]
    params = SamplingParams(max_tokens=12, temperature=0, ignore_eos=True)
    ids = [engine.add_request(p, params) for p in prompts[:1]]
    while engine.has_unfinished_requests():  # the first fills the prefix cache
        engine.step()
    ids = [engine.add_request(p, params) for p in prompts]
    tokens = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                tokens[out.request_id] = out.outputs[0].token_ids
    return [tokens[i] for i in ids], engine.runner.score(prefix + list(range(60, 90)))


@pytest.mark.parametrize("arch", ["llama", "mistral"])
@pytest.mark.parametrize("backend", ["flash-attn", "flash-attn-paged", "sdpa-flash"])
def test_flash_backend_bookkeeping_matches_sdpa(tmp_path, arch, backend):
    if backend == "sdpa-flash" and arch == "mistral":
        pytest.skip("sdpa-flash refuses sliding windows (tested below)")
    from tests.tiny_models import build_tiny

    build_tiny(arch, tmp_path)
    block_size = 256 if backend == "flash-attn-paged" else 16
    ref_tokens, ref_logits = _run(_engine(str(tmp_path), block_size))
    engine = _engine(str(tmp_path), block_size)
    if backend == "sdpa-flash":
        from torch.nn.attention import SDPBackend

        _install(engine, fa.SdpaFlashBackend([SDPBackend.MATH]))
    else:
        _install(engine, ReferenceFlashAttn())
    tokens, logits = _run(engine)
    assert tokens == ref_tokens
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_sdpa_flash_refuses_sliding_window_models(tmp_path):
    from tests.tiny_models import build_tiny

    build_tiny("mistral", tmp_path)
    engine = _engine(str(tmp_path))
    _install(engine, fa.SdpaFlashBackend())
    with pytest.raises(ConfigError, match="no sliding window"):
        engine.runner.score([3, 4, 5])


def test_selection_on_cpu():
    traits = ModelTraits(hidden_size=64, head_dim=16)
    assert select_backends(Config(device="cpu", attention_impl="sdpa", hardware=detect()), traits).attention == "sdpa"
    chosen = select_backends(Config(device="cpu", hardware=detect()), traits)
    assert chosen.attention in ("cpu-paged", "sdpa") and chosen.reasons["attention"]


def test_config_refuses_flash_on_cpu():
    with pytest.raises(ConfigError, match="flash attention needs a CUDA GPU"):
        Config(hardware=detect(), device="cpu", attention_impl="flash")
    with pytest.raises(ConfigError, match="flash attention needs a CUDA GPU"):
        build({"device": "cpu", "enable_flash_attention": True}, detect())
