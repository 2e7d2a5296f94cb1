"""oneDNN-packed float32 linear layers against F.linear, and how the engine uses them."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medvllm.layers.cpu_linear import PackedFloatMethod, pack_float_linears, packing_available
from medvllm.layers.linear import ReplicatedLinear

pytestmark = pytest.mark.skipif(not packing_available(torch.float32), reason="this torch has no oneDNN packing")


@pytest.mark.parametrize("rows", [1, 7, 64, 333])
@pytest.mark.parametrize("bias", [False, True])
def test_packed_layer_matches_f_linear(rows, bias):
    torch.manual_seed(0)
    layer = ReplicatedLinear(96, 200, bias=bias)
    layer.weight.data.normal_(0, 0.05)
    if bias:
        layer.bias.data.normal_(0, 0.05)
    dense_weight = layer.weight.detach().clone()
    x = torch.randn(rows, 96)
    expected = F.linear(x, dense_weight, layer.bias)
    method = PackedFloatMethod()
    method.process_weights_after_loading(layer)
    layer.method = method
    assert layer.weight.is_mkldnn
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(layer.weight.to_dense(), dense_weight)  # packing only re-lays the same numbers


def test_packing_skips_other_dtypes_and_quantized_layers():
    model = torch.nn.Sequential(ReplicatedLinear(8, 8), ReplicatedLinear(8, 8))
    assert pack_float_linears(model, torch.bfloat16) == 0
    model[1].method = object()  # as a quantization method would have set it
    assert pack_float_linears(model, torch.float32) == 1
    assert model[0].method.name == "float-packed" and model[1].weight.layout == torch.strided
