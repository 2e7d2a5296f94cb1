"""Dynamic int8 on CPU: the int8 linear against plain float math, the engine wiring, and the default
model's output quality against our float32 engine (itself checked against transformers elsewhere).

Quality thresholds (teacher-forced over two clinical passages, 218 tokens): mean KL(fp32 || int8)
<= 0.015 nats and top-1 agreement >= 0.93. Measured here (native kernel, scales per 32 inputs): KL 0.0057,
p99 0.041, top-1 0.963; with one scale per weight row and per token it was KL 0.054, p99 0.52, top-1 0.90.
For comparison torch.ao's quantize_dynamic (per-tensor weights, LM head included) measured KL 1.47, top-1
0.42.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from medvllm import LLM, SamplingParams
from medvllm.backends.cpu.int8_linear import rows_kernel_uses_amx
from medvllm.backends.cpu.native.build import NativeUnavailable, load
from medvllm.config import Config
from medvllm.deployment.merge import build
from medvllm.errors import ConfigError
from medvllm.hardware import detect
from medvllm.layers.int8_rows import QMAX, ROW_GROUP
from medvllm.layers.linear import ReplicatedLinear
from medvllm.quantization import METHODS, quantizable_layers
from medvllm.quantization.dynamic_int8 import GROUP, DynamicInt8Method
from tests.quant_quality import max_ngram_repeats, teacher_forced


def _native_builds(name: str = "int8_linear") -> bool:
    try:
        load(name)
        return True
    except NativeUnavailable:
        return False


def _rows_kernel_builds() -> bool:
    return _native_builds() and _native_builds("int8_rows_matmul")


KERNELS = [pytest.param("native", marks=pytest.mark.skipif(not _native_builds(), reason="no C compiler"))]


def _layer(n_in=96, n_out=80, bias=True, seed=0, method=None):
    torch.manual_seed(seed)
    layer = ReplicatedLinear(n_in, n_out, bias=bias, **({} if method is None else {"method": method}))
    layer.weight.data.normal_(0, 0.1)
    if bias:
        layer.bias.data.normal_(0, 0.1)
    return layer


def _quantized(**kwargs):
    """A Linear on dynamic int8, its random weights processed as a load would."""
    layer = _layer(method=DynamicInt8Method(), **kwargs)
    layer.process_weights_after_loading()
    return layer


def _grouped(t: torch.Tensor, group: int) -> torch.Tensor:
    """Symmetric int8 per row and group of `group` values along the last dim (the last group shorter),
    dequantized, in float64."""
    t = t.double()
    parts = []
    for part in t.split(group, dim=-1):
        step = part.abs().amax(-1, keepdim=True) / QMAX
        parts.append(torch.round(part / step.clamp(min=1e-30)) * step)
    return torch.cat(parts, dim=-1)


def _reference(weight: torch.Tensor, bias, x: torch.Tensor, group: int) -> torch.Tensor:
    """Weights per output channel and group of inputs, activations per token and group, in float64."""
    return F.linear(_grouped(x, group), _grouped(weight, group), None if bias is None else bias.double())


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_linear_matches_quantized_math_and_frees_the_float_weight(kernel):
    float_layer = _layer(n_in=98, n_out=83)  # widths off the kernels' blocking
    weight, bias = float_layer.weight.detach().clone(), float_layer.bias.detach().clone()
    x = torch.randn(7, 98)
    x[3] *= 50  # an outlier token must not cost the others their precision
    layer = _quantized(n_in=98, n_out=83)
    method = layer.method
    out = layer(x)
    exact, ref = F.linear(x, weight, bias).double(), _reference(weight, bias, x, GROUP)
    assert layer.weight.numel() == 0 and layer.method.name == "dynamic-int8" and method.kernel == kernel
    # native: exact int32 sums, so float rounding only; fbgemm's u8 activation grid (255 steps over
    # [-1, 1]) is the int8 grid up to rounding details
    assert (out.double() - ref).norm() / ref.norm() < (1e-6 if kernel == "native" else 0.01)
    per_row = (out.double() - exact).norm(dim=1) / exact.norm(dim=1)
    assert per_row.max() < (0.02 if kernel == "native" else 0.05)


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_rows_do_not_depend_on_the_batch(kernel):
    layer = _quantized(bias=False)
    x = torch.randn(70, 96)  # past the native kernel's 64-token block, ending in a partial group of 4
    x[0] *= 100
    batched = layer(x)
    for i in (0, 1, 5, 63, 64, 69):
        assert torch.equal(layer(x[i : i + 1]), batched[i : i + 1])
    assert torch.equal(layer(x[62:67]), batched[62:67])


def _native_int8_in_torch(x, weight, bias, group):
    """The native kernel's arithmetic written out in torch: symmetric int8 per token and group of inputs
    and per channel and group, exact integer dot products per group (float64 holds them exactly), then
    the kernel's float32 sum over the groups in order: total = fma(sum, token step * weight step, total),
    the fused multiply-add in float64 (the product is exact there) rounded once to float32."""
    from medvllm.layers.int8_rows import int8_groups

    q, w_scale = int8_groups(weight, group)
    total = torch.zeros(x.shape[0], weight.shape[0])
    for g, start in enumerate(range(0, x.shape[1], group)):
        part = slice(start, start + group)
        amax = x[:, part].abs().amax(dim=1)
        inv = torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax))
        sums = torch.round(x[:, part] * inv[:, None]).double() @ q[:, part].double().T
        steps = (amax / 127.0)[:, None] * w_scale[None, :, g]  # float32, rounded as the kernel rounds it
        total = (sums * steps.double() + total.double()).float()
    return total + bias


@pytest.mark.skipif(not _native_builds(), reason="no C compiler")
@pytest.mark.parametrize(
    "rows,n_in,n_out,group",
    [
        (1, 128, 40, 64),
        (4, 128, 40, 128),
        (5, 64, 16, 64),
        (15, 128, 40, 64),
        (16, 128, 48, 128),
        (17, 128, 33, 64),
        (70, 192, 200, 128),  # a last group of 64 inputs
        (48, 576, 80, 128),  # the default model's width: 4 groups of 128 and one of 64
        (33, 96, 50, 64),  # a last group of 32: AMX stands aside
        (9, 98, 21, 8),  # a last group of 2 inputs padded to 4, odd groups of 4 in each group
        (3, 40, 17, 4),
    ],
)
def test_native_int8_linear_is_the_exact_integer_math_on_every_path(rows, n_in, n_out, group):
    # whichever path this CPU takes (AMX for every token from 5 on when the input width and the group are
    # multiples of 64, the last tile padded; AVX-512 VNNI or AVX2 otherwise), the int32 sums of each group
    # are exact and the float steps after them the same: equal to the bit
    from medvllm.backends.cpu.int8_linear import int8_linear, native_int8_kernel, pack_int8

    torch.manual_seed(rows)
    weight, x, bias = torch.randn(n_out, n_in), torch.randn(rows, n_in), torch.randn(n_out)
    x[0] *= 30
    x[-1, n_in // 2] = 40  # one outlier input: its group's step only
    panels, scale, sums = pack_int8(weight, group)
    out = int8_linear(native_int8_kernel(), x, panels, scale, sums, group, n_out, bias)
    assert torch.equal(out, _native_int8_in_torch(x, weight, bias, group))


@pytest.mark.skipif(not _native_builds(), reason="no C compiler")
def test_an_outlier_input_costs_precision_to_its_own_group_only():
    # activation outliers (a few inputs far larger than the rest) are what made per-token scales lossy
    from medvllm.backends.cpu.int8_linear import int8_linear, native_int8_kernel, pack_int8

    torch.manual_seed(0)
    weight, x = torch.randn(64, 512) * 0.05, torch.randn(8, 512)
    x[:, 7] = 200
    weight[:, :128] = 0  # the outlier's group adds nothing: what is left is the other groups' rounding
    panels, scale, sums = pack_int8(weight, 128)
    out = int8_linear(native_int8_kernel(), x, panels, scale, sums, 128, 64, None).double()
    exact = x.double() @ weight.double().T
    per_token = _grouped(x, 512) @ _grouped(weight, 512).T  # one step per token and per channel
    assert (out - exact).norm() < (per_token - exact).norm() / 10


@pytest.mark.parametrize("kernel", KERNELS)
def test_int8_keeps_leading_dims_and_zero_rows(kernel):
    layer = _quantized()
    x = torch.randn(2, 3, 96)
    x[1, 2] = 0
    out = layer(x)
    assert out.shape == (2, 3, 80)
    assert torch.allclose(out[1, 2], layer.bias)


@pytest.mark.skipif(not _native_builds("int8_rows_matmul"), reason="no C compiler")
@pytest.mark.parametrize("width,group", [(100, 32), (100, 100), (576, 32), (96, 16)])
def test_int8_rows_head_is_weight_only_math_and_batch_invariant(width, group):
    from medvllm.backends.cpu.int8_linear import int8_rows_linear, native_rows_kernel
    from medvllm.layers.int8_rows import int8_groups

    torch.manual_seed(0)
    weight = torch.randn(203, width) * 0.1  # rows and width off every blocking (3, 8, 96 rows; 8 lanes)
    weight[5] *= 30
    weight[7, 3] = 40  # one large weight: its group's step only
    q, scale = int8_groups(weight, group)
    x = torch.randn(11, width)
    x[2] *= 50  # activations stay float: an outlier token changes nobody else's rounding
    out = int8_rows_linear(native_rows_kernel(), x, q, scale, group)
    rows_f64 = q.double() * scale.double().repeat_interleave(group, dim=1)[:, :width]
    exact, magnitude = x.double() @ rows_f64.T, x.double().abs() @ rows_f64.abs().T
    # float32 sums of `width` terms: within width units of float32 rounding of the terms' magnitudes (the
    # textbook bound of a sum in any order; the portable path adds one by one)
    assert out.shape == (11, 203) and ((out.double() - exact).abs() / magnitude).max() < width * 2**-24
    for rows in (slice(0, 1), slice(2, 3), slice(4, 9), slice(9, 11)):  # 1-row, 4-token and tail paths
        assert torch.equal(int8_rows_linear(native_rows_kernel(), x[rows], q, scale, group), out[rows])
    assert int8_rows_linear(native_rows_kernel(), x.view(1, 11, width), q, scale, group).shape == (1, 11, 203)


def _two_part_head_in_torch(x, q, scale):
    """int8_rows_amx.c written out in torch: each token as two int8 parts (a, then the rounding of what
    a leaves out), exact integer sums (float64 holds them), then the kernel's float32 epilogue."""
    amax = x.abs().amax(dim=1, keepdim=True)
    s1 = amax / 127.0
    a = torch.round(x * torch.where(amax > 0, 127.0 / amax, torch.zeros_like(amax)))
    rest = x - a * s1
    rmax = rest.abs().amax(dim=1, keepdim=True)
    s2 = rmax / 127.0
    b = torch.round(rest * torch.where(rmax > 0, 127.0 / rmax, torch.zeros_like(rmax)))
    sum_a, sum_b = (a.double() @ q.double().T).float(), (b.double() @ q.double().T).float()
    return (sum_a * s1 + sum_b * s2) * scale


@pytest.mark.skipif(not _rows_kernel_builds() or not rows_kernel_uses_amx(128, 128), reason="no AMX here")
def test_int8_rows_on_amx_is_the_two_part_integer_math_and_batch_invariant():
    from medvllm.backends.cpu.int8_linear import int8_rows_linear, native_rows_kernel
    from medvllm.layers.int8_rows import int8_groups

    torch.manual_seed(1)
    weight = torch.randn(203, 128) * 0.1  # a last partial tile of rows
    q, scale = int8_groups(weight, 128)  # one scale per row: what the AMX kernel takes
    x = torch.randn(37, 128)  # two token tiles and a partial one
    x[2] *= 50
    x[5] = 0
    out = int8_rows_linear(native_rows_kernel(), x, q, scale, 128)
    assert torch.equal(out, _two_part_head_in_torch(x, q, scale[:, 0]))
    for rows in (slice(0, 1), slice(2, 3), slice(4, 20), slice(30, 37)):
        assert torch.equal(int8_rows_linear(native_rows_kernel(), x[rows], q, scale, 128), out[rows])
    # the two parts carry ~16 bits: within max|x| / 64516 per input of the float32-input result
    exact = x.double() @ (q.double() * scale.double()).T
    bound = x.abs().amax(dim=1, keepdim=True).double() / 64516 * (q.double() * scale.double()).abs().sum(1)
    assert ((out.double() - exact).abs() <= bound * 1.01 + 1e-6).all()


def test_without_the_native_kernel_dynamic_is_refused_with_the_fix(monkeypatch):
    # no other kernel computes the same numbers: refused at engine start, never a silent substitute
    from medvllm.backends import select
    from medvllm.backends.select import ModelTraits, select_backends

    monkeypatch.setattr(select, "native_unavailable", lambda: "no C compiler found (install gcc, or set CC)")
    with pytest.raises(ConfigError, match="native int8 kernel, which cannot be built here .*install a C compiler"):
        select_backends(
            Config(device="cpu", quantization_method="dynamic", hardware=detect()),
            ModelTraits(hidden_size=64, head_dim=16),
        )


def test_engine_implements_the_profile_methods():
    assert set(METHODS) == {"dynamic", "gguf", "bnb-8bit", "bnb-nf4"}


def test_dynamic_refuses_mixed_precision_and_cuda():
    with pytest.raises(ConfigError, match="quantization_method='dynamic' computes in float32"):
        build({"device": "cpu", "quantization_method": "dynamic", "enable_mixed_precision": True}, detect())
    with pytest.raises(ConfigError, match="quantization_method='dynamic' computes in float32"):
        Config(hardware=detect(), device="cpu", quantization_method="dynamic", dtype="bfloat16")
    from dataclasses import replace

    from medvllm.hardware import GPUInfo

    gpu = replace(detect(), gpus=(GPUInfo("fake", (8, 0), 40 << 30),))
    with pytest.raises(ConfigError, match="runs on CPU only"):
        Config(device="cuda", quantization_method="dynamic", hardware=gpu)


@pytest.fixture(scope="module")
def int8_llm():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        llm = LLM(max_model_len=2048, max_num_batched_tokens=4096, quantization_method="dynamic")
        llm.generate(["Hello"], SamplingParams(max_tokens=2, temperature=0))
    llm.load_warnings = [str(w.message) for w in caught]
    return llm


@pytest.mark.slow
def test_int8_default_model_quantizes_every_linear_and_shares_one_int8_table_for_head_and_embedding(int8_llm):
    model = int8_llm.engine.runner.model
    layers = quantizable_layers(model)
    assert len(layers) == 4 * model.config.num_hidden_layers
    assert all(layer.method.name == "dynamic-int8" and layer.weight.numel() == 0 for layer in layers.values())
    info = int8_llm.runtime_info()
    assert info["quantization"]["method"] == "dynamic-int8" and info["quantization"]["layers"] == len(layers)
    head, embedding = model.lm_head, model.model.embed_tokens
    assert info["lm_head"] == head.method.name and info["quantization"]["embedding"] == "int8-rows"
    # the tied head and the embedding read the same int8 rows; no float table left
    expected = "int8-rows-2x8" if rows_kernel_uses_amx(head.packed.rows.shape[1], ROW_GROUP) else "int8-rows"
    assert head.method.name == expected and head.packed.rows is embedding.int8_rows
    assert head.weight.numel() == 0 and embedding.weight.numel() == 0
    assert info["quantization"]["float_layers"] == 0
    assert info["dtype"] == "float32"
    # int8 weight bytes (with the per-row scales) against float32
    float_bytes = sum(layer.in_features * layer.out_features * 4 for layer in layers.values())
    assert sum(layer.packed.nbytes for layer in layers.values()) <= 0.3 * float_bytes
    assert info["quantization"]["kernel"] == "native"  # what the tensors really hold, padding included
    held = sum(
        layer.packed.panels.untyped_storage().nbytes()
        + layer.packed.scale.untyped_storage().nbytes()
        + layer.packed.col_sums.untyped_storage().nbytes()
        for layer in layers.values()
    )
    assert held <= 0.31 * float_bytes  # 1 byte a weight, 6 per output and group of 32 inputs, padding


@pytest.mark.slow
def test_int8_no_warnings_reach_the_user(int8_llm):
    assert not [w for w in int8_llm.load_warnings if "deprecat" in w.lower() or "quantiz" in w.lower()]


@pytest.mark.slow
def test_int8_default_model_close_to_float32(default_llm, int8_llm):
    q = teacher_forced(default_llm, int8_llm, default_llm.tokenizer)
    assert q["kl_mean"] <= 0.015 and q["top1"] >= 0.93, q


@pytest.mark.slow
def test_int8_default_model_answers_without_degenerating(int8_llm):
    from tests.conftest import CHAT_PROMPTS

    outs = int8_llm.chat(
        [[{"role": "user", "content": p}] for p in CHAT_PROMPTS], SamplingParams(max_tokens=32, temperature=0)
    )
    for out in outs:
        tokens = out.outputs[0].token_ids
        assert len(tokens) >= 8 and max_ngram_repeats(tokens) <= 3, out.outputs[0].text


def test_int8_embedding_rows_are_the_float_rows_within_half_a_step():
    from medvllm.layers.embedding import VocabParallelEmbedding

    torch.manual_seed(0)
    emb = VocabParallelEmbedding(50, 24, form="int8-rows")
    emb.weight.data.normal_(0, 0.1)
    emb.weight.data[7] *= 40  # a row with a wide range keeps its own scale
    table = emb.weight.detach().clone()
    emb.process_weights_after_loading()
    ids = torch.tensor([[7, 0, 49], [3, 3, 7]])
    out = emb(ids)
    step = table.abs().amax(1) / 127
    assert emb.weight.numel() == 0 and emb.int8_rows.dtype == torch.int8 and out.shape == (2, 3, 24)
    # per-row steps: with one scale for the table, row 0 would be off by up to row 7's half step
    assert ((out - table[ids]).abs() <= step[ids][..., None] / 2 + 1e-7).all()
