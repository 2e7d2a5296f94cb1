"""The float32 packed-panel Linear (native/f32_panels.c) against the same product in float64."""

from __future__ import annotations

import pytest
import torch

from medvllm.backends.cpu.native.build import NativeUnavailable


def _lib():
    from medvllm.backends.cpu.panel_linear import _library

    try:
        return _library()
    except NativeUnavailable as e:
        pytest.skip(f"native kernels unavailable: {e}")


# columns around the 48 of a panel, tokens around the 8 of a tile and the 256 of a pass over the weight
@pytest.mark.parametrize("n_out,n_in", [(1, 1), (47, 17), (48, 64), (49, 576), (100, 33), (960, 576)])
@pytest.mark.parametrize("rows", [1, 7, 9, 64, 300])
def test_matches_float64_math(n_out, n_in, rows):
    from medvllm.backends.cpu.panel_linear import pack_panels, panel_linear

    lib = _lib()
    g = torch.Generator().manual_seed(n_out * 1000 + rows)
    w, x, b = (
        torch.randn(n_out, n_in, generator=g),
        torch.randn(rows, n_in, generator=g),
        torch.randn(n_out, generator=g),
    )
    panels = pack_panels(lib, w)
    for bias in (b, None):
        out = panel_linear(lib, x, panels, n_out, bias)
        ref = x.double() @ w.double().T + (0 if bias is None else bias.double())
        assert out.shape == (rows, n_out)
        # float32 rounding over n_in products: a few ulps of the largest partial sums
        assert (out.double() - ref).abs().max().item() <= 1e-5 * (n_in**0.5) * (1 + ref.abs().max().item())


def test_a_tokens_result_does_not_depend_on_the_others_or_the_threads():
    from medvllm.backends.cpu.panel_linear import pack_panels, panel_linear

    lib = _lib()
    g = torch.Generator().manual_seed(1)
    w, x = torch.randn(200, 96, generator=g), torch.randn(300, 96, generator=g)
    panels = pack_panels(lib, w)
    batch = panel_linear(lib, x, panels, 200, None)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        alone = torch.cat([panel_linear(lib, x[i : i + 1], panels, 200, None) for i in (0, 7, 8, 255, 256, 299)])
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(alone, batch[[0, 7, 8, 255, 256, 299]])


def test_panels_hold_the_weight_and_zero_padding_only():
    import medvllm.backends.cpu.panel_linear as panel

    lib = _lib()
    w = torch.randn(150, 40)
    whole = panel.pack_panels(lib, w)
    assert whole.numel() == 4 * 48 * 40  # 150 columns in four panels, the last zero-padded
    assert torch.equal(panel.unpack_panels(whole, 150, 40), w)
    assert not whole.view(4, 40, 48)[3, :, 150 - 144 :].any()


@pytest.mark.parametrize("arch", ["llama", "llama3_rope_untied"])  # tied / untied LM head
def test_engine_holds_each_weight_once_as_panels(tmp_path, arch):
    from medvllm import LLM
    from tests.tiny_models import build_tiny

    _lib()
    build_tiny(arch, tmp_path)
    llm = LLM(str(tmp_path), num_kvcache_blocks=32, max_model_len=128)
    model = llm.engine.runner.model
    layer = model.model.layers[0]
    for linear in (
        layer.self_attn.qkv_proj,
        layer.self_attn.o_proj,
        layer.mlp.gate_up_proj,
        layer.mlp.down_proj,
        model.lm_head,
    ):
        assert linear.method.name == "float-panels" and linear.weight.numel() == 0
        assert linear.packed.numel() == -(-linear.out_features // 48) * 48 * linear.in_features
    assert llm.runtime_info()["lm_head"] == "float-panels"
    assert model.model.embed_tokens.weight.shape == (256, 64)  # a tied head's table stays the embedding's
