"""bitsandbytes methods: refused without CUDA or the package; their wiring checked on CPU when the
package is installed (bitsandbytes >= 0.45 has CPU kernels). The CUDA runs are in
tests/backends/cuda/test_backends.py."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from medvllm.config import Config
from medvllm.errors import ConfigError
from medvllm.hardware import GPUInfo, detect
from medvllm.layers.linear import ReplicatedLinear

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
GPU = replace(detect(), gpus=(GPUInfo("fake A100", (8, 0), 40 << 30),))


@pytest.mark.parametrize("method", ["bnb-8bit", "bnb-nf4", "bnb-4bit"])
def test_bnb_refused_on_cpu(method):
    with pytest.raises(ConfigError, match="needs a CUDA GPU"):
        Config(hardware=detect(), device="cpu", quantization_method=method)


def test_bnb_refused_without_the_package():
    no_bnb = replace(GPU, backends={**GPU.backends, "bitsandbytes": False})
    with pytest.raises(ConfigError, match="needs the bitsandbytes package"):
        Config(device="cuda", quantization_method="bnb-8bit", hardware=no_bnb)


def test_bnb_method_refuses_cleanly_when_import_fails(monkeypatch):
    from medvllm.quantization.bnb import Bnb8bitMethod

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'medvllm\[bnb\]'"):
        Bnb8bitMethod()


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("name,tolerance", [("bnb-8bit", 0.03), ("bnb-nf4", 0.15)])
def test_bnb_method_wiring_on_cpu(name, tolerance):
    import warnings

    from medvllm.quantization.bnb import Bnb8bitMethod, BnbNf4Method

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        method = {"bnb-8bit": Bnb8bitMethod, "bnb-nf4": BnbNf4Method}[name]("cpu")
        layer = ReplicatedLinear(128, 96, bias=True, method=method)
        layer.weight.data.normal_(0, 0.05)
        layer.bias.data.normal_(0, 0.05)
        weight, bias = layer.weight.detach().clone(), layer.bias.detach().clone()
        layer.process_weights_after_loading()
        x = torch.randn(5, 128)
        out = layer(x)
    exact = F.linear(x, weight, bias)
    assert layer.weight.numel() == 0 and layer.method.name == name
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias"]  # bnb's layer is out of the tree
    assert ((out - exact).norm() / exact.norm()).item() < tolerance
