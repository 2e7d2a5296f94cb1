"""Quantization while loading: each layer is quantized, and its float weight freed, as soon as the
stream has filled it, so the float model never sits in memory whole; the result equals quantizing
after a full float load."""

from __future__ import annotations

import pytest
import torch

from medvllm.backends.cpu.native.build import NativeUnavailable
from medvllm.layers.kit import LayerKit
from medvllm.loader import open_model
from medvllm.models.loading import build_model
from medvllm.quantization import quantizable_layers
from medvllm.quantization.dynamic_int8 import DynamicInt8Method


def _dynamic_unavailable() -> str | None:
    try:
        DynamicInt8Method()
        return None
    except NativeUnavailable as e:  # no C compiler for the native kernel
        return str(e)


def _int8_kit() -> LayerKit:
    return LayerKit(linear=DynamicInt8Method())


pytestmark = pytest.mark.skipif(_dynamic_unavailable() is not None, reason=str(_dynamic_unavailable()))


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny_source(request, tmp_path_factory):
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp(request.param)
    build_tiny(request.param, folder)
    return open_model(str(folder))


class WatchedSource:
    """The source's stream, noting after each tensor how many layers were already quantized."""

    def __init__(self, source):
        self.source, self.quantized_when = source, []
        self.hf_config = source.hf_config
        self.model = None

    def iter_weights(self, blocks: bool = False):
        for item in self.source.iter_weights(blocks):
            yield item
            if self.model is not None:
                self.quantized_when.append(
                    sum(layer.weight.numel() == 0 for layer in quantizable_layers(self.model).values())
                )


def test_layers_are_quantized_during_the_stream(tiny_source, monkeypatch):
    watched = WatchedSource(tiny_source)
    import medvllm.models.loading as loading

    real = loading.load_weights

    def load(model, weights):
        watched.model = model
        return real(model, weights)

    monkeypatch.setattr(loading, "load_weights", load)
    model = build_model(watched, 64, torch.float32, torch.device("cpu"), _int8_kit())
    total = len(quantizable_layers(model))
    assert watched.quantized_when[-1] == total
    # a layer's float weight is gone long before the stream ends: half the stream in, some are quantized
    assert watched.quantized_when[len(watched.quantized_when) // 2] > 0


def test_streamed_quantization_equals_quantizing_after_load(tiny_source):
    streamed = build_model(tiny_source, 64, torch.float32, torch.device("cpu"), _int8_kit())
    after = build_model(tiny_source, 64, torch.float32, torch.device("cpu"), _int8_kit(), process_while_loading=False)
    x = torch.randn(5, streamed.config.hidden_size)
    for name, layer in quantizable_layers(streamed).items():
        other = quantizable_layers(after)[name]
        inp = x if layer.in_features == x.shape[1] else torch.randn(5, layer.in_features)
        assert torch.equal(layer(inp), other(inp)), name


def test_the_embedding_keeps_a_whole_table_handed_over_and_copies_anything_else():
    """A loader's fresh full table is kept as the weight (no second copy of the largest tensor); a view
    into a bigger buffer, or another dtype, is copied as before."""
    from medvllm.layers.embedding import VocabParallelEmbedding

    table = torch.randn(50, 8)
    emb = VocabParallelEmbedding(50, 8)
    emb.load_weight("weight", table)
    assert emb.weight.data_ptr() == table.data_ptr()
    bigger = torch.randn(60, 8)
    emb.load_weight("weight", bigger[:50])
    assert emb.weight.data_ptr() != bigger.data_ptr() and torch.equal(emb.weight, bigger[:50])
    emb.load_weight("weight", table.double())
    assert emb.weight.dtype == torch.float32 and torch.equal(emb.weight, table)
