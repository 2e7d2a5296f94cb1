"""Mixed precision on CPU: bf16 runs with float32 where it matters, fp16 is refused, and the default
model stays close to float32.

Quality thresholds (teacher-forced over two clinical passages): mean KL(fp32 || bf16) <= 0.01 and
top-1 agreement >= 0.97; greedy 16-token answers to the five chat prompts share >= 50% of their
tokens (16 each) as common prefix. Measured here: KL 0.0014, top-1 0.995, prefixes (of 32) 32/15/5/32/32.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvllm import LLM, SamplingParams
from medvllm.config import Config
from medvllm.deployment.merge import build
from medvllm.errors import ConfigError
from medvllm.hardware import detect
from medvllm.layers.norm import RMSNorm
from medvllm.quality.metrics import common_prefix
from tests.quant_quality import teacher_forced


def test_fp16_on_cpu_is_refused():
    with pytest.raises(ConfigError, match=r"float16\) is not supported on CPU"):
        build({"device": "cpu", "enable_mixed_precision": True, "mixed_precision_dtype": "fp16"}, detect())
    with pytest.raises(ConfigError, match=r"float16\) is not supported on CPU"):
        Config(device="cpu", dtype="float16", hardware=detect())


def test_rmsnorm_statistics_in_float32():
    """bf16 in, the statistics in float32: equal to the float64 norm rounded once more to bf16."""
    torch.manual_seed(0)
    x = (torch.randn(4, 512) * 30).bfloat16()
    norm = RMSNorm(512, 1e-6).bfloat16()
    out = norm(x)
    x64 = x.double()
    exact = x64 * torch.rsqrt(x64.pow(2).mean(-1, keepdim=True) + 1e-6)
    assert out.dtype == torch.bfloat16
    assert ((out.double() - exact).abs() <= exact.abs() * 2**-7 + 1e-6).all()


def test_attention_softmax_accumulates_in_float32():
    """bf16 SDPA as the engine calls it (bool mask, GQA) is as accurate as float32 math on the same
    bf16 inputs rounded to bf16 once at the end, i.e. its softmax is not computed in bf16."""
    torch.manual_seed(0)
    q, k, v = torch.randn(4, 9, 8, 64), torch.randn(4, 3, 300, 64), torch.randn(4, 3, 300, 64)
    mask = torch.ones(4, 1, 8, 300, dtype=torch.bool).tril(292)
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask, enable_gqa=True)
    bf = F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), attn_mask=mask, enable_gqa=True)
    f32 = F.scaled_dot_product_attention(
        *(t.bfloat16().float() for t in (q, k, v)), attn_mask=mask, enable_gqa=True
    ).bfloat16()

    def err(t):
        return ((t.double() - exact).norm() / exact.norm()).item()

    assert err(bf) <= 1.5 * err(f32)


def test_cpu_backend_flags_are_not_touched():
    from medvllm.config import ConfigWarning
    from medvllm.engine.precision import apply_backend_flags

    before = torch.backends.cudnn.benchmark
    with pytest.warns(ConfigWarning, match="does nothing on cpu"):
        config = Config(device="cpu", allow_tf32=True, cudnn_benchmark=True, hardware=detect())
    flags = apply_backend_flags(config, torch.device("cpu"))
    assert flags == {"allow_tf32": None, "cudnn_benchmark": None}
    assert torch.backends.cudnn.benchmark == before


@pytest.fixture(scope="module")
def bf16_llm():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the CPU may lack native bf16; Config says so in a warning
        return LLM(max_model_len=2048, max_num_batched_tokens=4096, enable_mixed_precision=True)


@pytest.mark.slow
def test_bf16_runs_in_bf16_with_float32_logits(bf16_llm):
    runner = bf16_llm.engine.runner
    info = bf16_llm.runtime_info()
    assert info["dtype"] == "bfloat16" and info["lm_head"] == "float32-logits"
    assert runner.model.model.layers[0].mlp.down_proj.weight.dtype == torch.bfloat16
    assert runner.kv_cache.dtype == torch.bfloat16
    hidden = torch.randn(3, runner.model.config.hidden_size).bfloat16()
    assert runner.model.compute_logits(hidden).dtype == torch.float32


@pytest.mark.slow
def test_bf16_default_model_close_to_float32(default_llm, bf16_llm):
    q = teacher_forced(default_llm, bf16_llm, default_llm.tokenizer)
    assert q["kl_mean"] <= 0.01 and q["top1"] >= 0.97, q


@pytest.mark.slow
def test_bf16_greedy_answers_mostly_agree(default_llm, bf16_llm):
    from tests.conftest import CHAT_PROMPTS

    chats = [[{"role": "user", "content": p}] for p in CHAT_PROMPTS]
    params = SamplingParams(max_tokens=16, temperature=0, ignore_eos=True)
    ref, got = default_llm.chat(chats, params), bf16_llm.chat(chats, params)
    shared = sum(common_prefix(a.outputs[0].token_ids, b.outputs[0].token_ids) for a, b in zip(ref, got))
    assert shared >= 0.5 * 16 * len(chats), shared
