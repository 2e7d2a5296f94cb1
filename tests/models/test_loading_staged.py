"""Loading for a method that packs from host memory (bitsandbytes quantizes on the way to the GPU): the
float decoder weights are loaded on the host and packed onto the engine's device layer by layer, so the
device never holds the float model. The `meta` device stands in for the GPU."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medvllm.layers.kit import LayerKit
from medvllm.layers.linear import LinearMethod
from medvllm.loader import open_model
from medvllm.models.loading import build_model, linear_layers
from tests.tiny_models import build_tiny

DEVICE = torch.device("meta")
MAX_LEN = 77  # a rotary table of its own: the stand-in device must not reach other tests' tables


class HostPacked(LinearMethod):
    name = "host-packed"
    frees_weight = True

    def __init__(self, device: torch.device, from_host: bool):
        self.device, self.packs_from_host = device, from_host
        self.seen: list[torch.device] = []

    def pack(self, layer):
        self.seen.append(layer.weight.device)
        return layer.weight.detach().to(self.device)

    def apply(self, layer, x):
        return F.linear(x, layer.packed, layer.bias)


def _build(tmp_path, from_host: bool):
    build_tiny("llama", tmp_path)
    method = HostPacked(DEVICE, from_host)
    model = build_model(open_model(str(tmp_path)), MAX_LEN, torch.float32, DEVICE, LayerKit(linear=method))
    return model, method


def test_host_packing_methods_load_on_the_host_and_end_on_the_device(tmp_path):
    model, method = _build(tmp_path, from_host=True)
    layers = linear_layers(model)
    assert len(method.seen) == len(layers) and {d.type for d in method.seen} == {"cpu"}
    assert all(layer.packed.device == DEVICE and layer.weight.numel() == 0 for layer in layers.values())
    assert {p.device for p in model.parameters()} == {DEVICE}  # norms, embedding, head followed
    assert model.lm_head.processed


def test_other_methods_load_straight_onto_the_device(tmp_path):
    _, method = _build(tmp_path, from_host=False)
    assert {d.type for d in method.seen} == {DEVICE.type}
