"""The GGUF block kernels (native/gguf_*.c through backends/cpu/gguf_matmul.py) against float64 math on
gguf-py's own dequantization, and against the portable path bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvllm.backends.cpu.native.build import NativeUnavailable

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as Q, quants  # noqa: E402

TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0, Q.Q4_K, Q.Q5_K, Q.Q6_K]
HALVES = {  # byte offsets of each block's float16 fields (d, m / dmin)
    Q.Q4_0: [0],
    Q.Q4_1: [0, 2],
    Q.Q5_0: [0],
    Q.Q5_1: [0, 2],
    Q.Q8_0: [0],
    Q.Q4_K: [0, 2],
    Q.Q5_K: [0, 2],
    Q.Q6_K: [208],
}


@pytest.fixture(scope="module")
def G():
    from medvllm.backends.cpu import gguf_matmul
    from medvllm.backends.cpu.native import binding

    try:
        binding.library()
    except NativeUnavailable as e:
        pytest.skip(f"native kernels unavailable: {e}")
    return gguf_matmul


def blocks(qt, n, k, rng, random_bytes=False) -> np.ndarray:
    """uint8 [n, row bytes]: gguf's quantization of random floats where it has one, else random bytes
    with finite float16 scales of a sensible size."""
    if not random_bytes:
        try:
            return quants.quantize(rng.standard_normal((n, k)).astype(np.float32), qt)
        except NotImplementedError:
            pass
    block, size = gguf.GGML_QUANT_SIZES[qt]
    b = rng.integers(0, 256, (n, k // block, size), dtype=np.uint8)
    for at in HALVES[qt]:
        scale = rng.uniform(-0.02, 0.02, (n, k // block)).astype(np.float16)
        b[..., at : at + 2] = scale.view(np.uint8).reshape(n, k // block, 2)
    return b.reshape(n, -1)


def activations(m, k, gen) -> torch.Tensor:
    x = torch.randn(m, k, generator=gen)
    x[:, 5] *= 40.0  # an outlier in every token's first block
    x[0, 32:64] = 0.0  # a block of zeros
    x[-1, 7] = 0.0
    return x


def error_bound(x: torch.Tensor, w: np.ndarray, parts: int) -> np.ndarray:
    """Per output: activation rounding (|x - d q| <= d / 2 per input, d / 508 with two parts) times the
    weights it meets, plus float32 rounding over the blocks."""
    xd, aw = x.double().numpy(), np.abs(w)
    step = np.abs(xd).reshape(x.shape[0], -1, 32).max(-1) / 127 / 2 / (254 if parts == 2 else 1)
    per_block = aw.reshape(w.shape[0], -1, 32).sum(-1)
    rounding = 2.0**-22 * (x.shape[1] / 32 + 8) * (np.abs(xd) @ aw.T)
    return step @ per_block.T + rounding + 1e-30


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("random_bytes", [False, True], ids=["quantized", "random"])
def test_matches_float64_within_the_activation_rounding(G, qt, random_bytes):
    rng, gen = np.random.default_rng(int(qt)), torch.Generator().manual_seed(int(qt))
    n, k = 37, 512  # 37 rows: no multiple of a tile
    w = blocks(qt, n, k, rng, random_bytes)
    W = quants.dequantize(w, qt).astype(np.float64)
    t = torch.from_numpy(w)
    for m in (1, 3, 8, 67):
        x = activations(m, k, gen)
        ref = x.double().numpy() @ W.T
        err = {}
        for parts in (1, 2):
            y = G.gguf_linear(x, t, int(qt), parts)
            assert y.shape == (m, n) and y.dtype == torch.float32
            diff = np.abs(y.double().numpy() - ref)
            assert (diff <= error_bound(x, W, parts)).all(), (m, parts, diff.max())
            err[parts] = diff.max()
        assert err[2] < err[1] / 30, err  # the second part: ~8 more bits


def rounded_activations(x: torch.Tensor, parts: int) -> torch.Tensor:
    """The inputs the kernels multiply (gguf_act.c), in float64: int8 steps of amax / 127 per 32, and with
    two parts the residual's int8 steps of a 254th of that."""
    v = x.reshape(x.shape[0], -1, 32)
    d = v.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d > 0, 1 / d, torch.zeros_like(d))
    q = (v * inv).clamp(-127, 127).round()
    out = q.double() * d.double()
    if parts == 2:
        r = ((v - q * d) * (inv * 254)).clamp(-127, 127).round()
        out += r.double() * (d.double() / 254)
    return out.reshape(x.shape)


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_the_rounding_meets_the_whole_weight(G, qt):
    """A row is ws * u + wm (u >= 0): only if both terms take the same rounded inputs does the rounding
    error meet the centred weight rather than ws * u alone. So the result is the file's weights times the
    rounded inputs, up to float32 sums, far closer to that than the rounding moves it (summing the real
    inputs into wm's term tripled one part's error on the default model)."""
    rng, gen = np.random.default_rng(7 + int(qt)), torch.Generator().manual_seed(int(qt))
    n, k = 24, 512
    W = quants.dequantize(w := blocks(qt, n, k, rng), qt).astype(np.float64)
    x = activations(19, k, gen)
    exact = x.double().numpy() @ W.T
    for parts in (1, 2):
        y = G.gguf_linear(x, torch.from_numpy(w), int(qt), parts).double().numpy()
        rounded = rounded_activations(x, parts).numpy() @ W.T
        assert np.linalg.norm(y - rounded) < 0.01 * np.linalg.norm(rounded - exact), (parts, qt.name)


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_every_path_computes_what_the_portable_one_does(G, qt):
    from medvllm.backends.cpu.native import binding

    rng, gen = np.random.default_rng(1), torch.Generator().manual_seed(1)
    n, k = 21, 256
    t = torch.from_numpy(blocks(qt, n, k, rng, random_bytes=True))
    for m in (1, 5, 16, 35):  # rows in lanes, tokens in lanes, and both
        x = activations(m, k, gen)
        for parts in (1, 2):
            qx = G.quantize_activations(x, parts)
            fast, slow = torch.zeros(m, n), torch.zeros(m, n)
            assert binding.gguf_matmul_q(fast, 0, qx, m, k, t, int(qt), parts, 2) == 0
            assert binding.gguf_matmul_q(slow, 0, qx, m, k, t, int(qt), parts, 2, reference=True) == 0
            assert torch.equal(fast, slow), (m, parts)


@pytest.mark.parametrize("qt", TYPES, ids=lambda t: t.name)
def test_dequantize_rows_is_gguf_to_the_bit(G, qt):
    rng = np.random.default_rng(2)
    for random_bytes in (False, True):
        w = blocks(qt, 19, 512, rng, random_bytes)
        ids = torch.tensor([[18, 0], [7, 7]])
        got = G.dequantize_rows(torch.from_numpy(w), int(qt), 512, ids)
        assert got.shape == (2, 2, 512)
        want = quants.dequantize(w[ids.reshape(-1).numpy()], qt).reshape(2, 2, 512)
        assert np.array_equal(got.numpy().view(np.uint32), want.view(np.uint32))


def test_a_tokens_result_does_not_depend_on_the_batch_or_the_threads(G):
    from medvllm.backends.cpu.native import binding

    rng, gen = np.random.default_rng(3), torch.Generator().manual_seed(3)
    k, n, m = 256, 45, 67
    x = activations(m, k, gen)
    for qt in (Q.Q4_0, Q.Q4_K, Q.Q6_K, Q.Q8_0):
        t = torch.from_numpy(blocks(qt, n, k, rng, random_bytes=True))
        for parts in (1, 2):
            batch = G.gguf_linear(x, t, int(qt), parts)
            for i in (0, 15, 16, 47, 66):  # group starts and ends, and the tail
                assert torch.equal(G.gguf_linear(x[i : i + 1], t, int(qt), parts), batch[i : i + 1])
            assert torch.equal(G.gguf_linear(x[20:37], t, int(qt), parts), batch[20:37])
            one = torch.empty(m, n)
            assert binding.gguf_linear(one, 0, x, t, int(qt), parts, 1) == 0
            assert torch.equal(one, batch)


def test_weights_write_side_by_side_into_one_output(G):
    rng, gen = np.random.default_rng(4), torch.Generator().manual_seed(4)
    k, m = 512, 9
    x = activations(m, k, gen)
    parts = [(Q.Q4_K, 24), (Q.Q6_K, 8), (Q.Q8_0, 13)]  # q, k, v of different types
    ws = [torch.from_numpy(blocks(qt, n, k, rng, random_bytes=True)) for qt, n in parts]
    for p in (1, 2):
        qx = G.quantize_activations(x, p)
        out = torch.full((m, 50), 7.0)  # 45 columns used, 5 left alone
        col = 0
        for (qt, n), w in zip(parts, ws):
            G.matmul_quantized(qx, m, k, w, int(qt), p, out, col)
            assert torch.equal(out[:, col : col + n], G.gguf_linear(x, w, int(qt), p))
            col += n
        assert (out[:, col:] == 7.0).all()


def test_bad_inputs_raise_one_line_errors(G):
    rng = np.random.default_rng(5)
    w = torch.from_numpy(blocks(Q.Q4_K, 4, 512, rng, random_bytes=True))
    x = torch.randn(2, 512)
    cases = [
        (lambda: G.gguf_linear(x.double(), w, int(Q.Q4_K)), TypeError, "float32"),
        (lambda: G.gguf_linear(x, w.view(torch.int8), int(Q.Q4_K)), TypeError, "uint8"),
        (lambda: G.gguf_linear(x, w[:, :-1].contiguous(), int(Q.Q4_K)), ValueError, "288"),
        (lambda: G.gguf_linear(x[:, :480].contiguous(), w, int(Q.Q4_K)), ValueError, "multiple of GGML type 12"),
        (lambda: G.gguf_linear(torch.randn(2, 100), w, int(Q.Q4_K)), ValueError, "multiple of 32"),
        (lambda: G.gguf_linear(x, w, 10), ValueError, "GGML type 10"),
        (lambda: G.gguf_linear(x, w, int(Q.Q4_K), parts=3), ValueError, "parts"),
        (lambda: G.gguf_linear(x[:, ::2], w, int(Q.Q4_K)), (TypeError, ValueError), ""),
        (
            lambda: G.matmul_quantized(G.quantize_activations(x), 3, 512, w, int(Q.Q4_K), 1, torch.empty(3, 4)),
            ValueError,
            "qx",
        ),
        (
            lambda: G.matmul_quantized(G.quantize_activations(x), 2, 512, w, int(Q.Q4_K), 1, torch.empty(2, 6), 3),
            ValueError,
            "room",
        ),
        (lambda: G.dequantize_rows(w, int(Q.Q4_K), 512, torch.tensor([4])), ValueError, "rows"),
    ]
    for call, kind, text in cases:
        with pytest.raises(kind) as e:
            call()
        assert text in str(e.value) and "\n" not in str(e.value), str(e.value)
    assert G.row_bytes(int(Q.Q4_K), 512) == 288 and G.row_bytes(int(Q.Q4_0), 96) == 54
    assert G.SUPPORTED == {int(t) for t in TYPES}
