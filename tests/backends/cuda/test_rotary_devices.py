"""One rotary table object is shared by every model of its shape in the process (layers/rotary.get_rotary).
An engine on another device (here `meta`, standing in for CUDA, so this runs on a CPU-only build) must not
move a CPU engine's tables: the CPU's C kernels read them by pointer."""

import pytest
import torch

from medvllm.loader import open_model
from medvllm.models.loading import build_model
from tests.tiny_models import build_tiny

CPU, META = torch.device("cpu"), torch.device("meta")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_llama")
    build_tiny("llama", path)
    return str(path)


def _rotary(model):
    return model.model.layers[0].self_attn.rotary


def test_a_model_on_another_device_leaves_the_cpu_tables_on_the_cpu(folder):
    cpu_model = build_model(open_model(folder), 64, torch.float32, CPU)
    head_dim = cpu_model.model.layers[0].self_attn.head_dim
    q = torch.randn(3, 4, head_dim)
    before = _rotary(cpu_model).rotate(torch.arange(3), q)
    other = build_model(open_model(folder), 64, torch.float32, META)
    rotary = _rotary(cpu_model)
    assert rotary.cos.device == CPU and rotary.sin.device == CPU  # what the native decode layer reads
    assert torch.equal(rotary.rotate(torch.arange(3), q), before)
    on_meta = _rotary(other).rotate(torch.arange(3, device=META), q.to(META))
    assert on_meta.device == META and on_meta.shape == q.shape
    assert _rotary(cpu_model).rotate(torch.arange(3), q).device == CPU  # and back, in either order
