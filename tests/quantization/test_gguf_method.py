"""quantization_method='gguf': a GGUF file's own blocks, loaded without expanding them and run by the
native block kernels; checked against transformers' logits on the same file (which it decodes to float)
and against our float32 engine on the embedded default model."""

from __future__ import annotations

import pytest
import torch
import transformers
from gguf import GGMLQuantizationType as Q

from medvllm import LLM
from medvllm.errors import ConfigError, ModelLoadError
from medvllm.loader import open_model
from medvllm.loader.gguf_blocks import BlockTensor
from medvllm.quantization.gguf import GGUFWeight
from tests.loader.test_gguf_tiny import tiny_model, write_gguf
from tests.quant_quality import teacher_forced

TYPES = [Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q8_0]


def _gguf(tmp_path, arch="llama", qtype=Q.Q4_0):
    return write_gguf(tmp_path / "tiny.gguf", tiny_model(arch), arch, qtype)


@pytest.mark.parametrize("qtype", TYPES + [Q.F16])
def test_blocks_decode_to_the_float_stream(tmp_path, qtype):
    """The block stream holds the same rows as the float stream (Q/K un-permuted by whole rows)."""
    source = open_model(str(_gguf(tmp_path, qtype=qtype)))
    floats = dict(source.iter_weights())
    blocks = dict(source.iter_weights(blocks=True))
    assert set(floats) == set(blocks)
    for name, tensor in blocks.items():
        if len(tensor.shape) == 2:
            assert isinstance(tensor, BlockTensor) and tensor.qtype == qtype, name
            assert torch.equal(tensor.dequantize(), floats[name]), name
            assert torch.equal(tensor.rows_as_float(torch.tensor([1, 0, 1])), floats[name][[1, 0, 1]]), name
        else:
            assert torch.equal(tensor, floats[name]), name


def test_a_split_inside_a_block_is_refused():
    blocks = BlockTensor(Q.Q8_0, torch.zeros(4, 2 * 34, dtype=torch.uint8), torch.Size((4, 64)))
    assert blocks.narrow(1, 32, 32).blocks.shape == (4, 34)
    with pytest.raises(ModelLoadError, match="cannot be split into inputs 16..63"):
        blocks.narrow(1, 16, 48)


def _transformers_logits(folder, ids):
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file="tiny.gguf", local_files_only=True)
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("qtype", TYPES)
def test_logits_match_transformers_on_the_same_file(tmp_path, arch, qtype):
    path = _gguf(tmp_path, arch, qtype)
    ids = list(range(5, 45))
    expected = _transformers_logits(tmp_path, ids)
    llm = LLM(model=str(path), deployment_profile="none", quantization_method="gguf", max_model_len=128)
    got = llm.engine.score(ids).float()
    # only the activations are rounded (int8 per block of 32): the logits stay close, the top token the same
    assert (got - expected).abs().max() < 0.05 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.95
    info = llm.runtime_info()["quantization"]
    assert (
        info["method"] == "gguf" and info["embedding"] == "gguf" and info["types"] == {qtype.name: info["layers"] + 1}
    )
    packed = [m for m in llm.engine.runner.model.modules() if isinstance(getattr(m, "packed", None), GGUFWeight)]
    assert len(packed) == info["layers"] + 1  # the head too
    assert all(layer.weight.numel() == 0 for layer in packed)  # no float copy of any projection is held


def test_refused_where_it_cannot_run(tmp_path):
    folder = tmp_path / "hf"
    tiny_model("llama").save_pretrained(folder)
    from tests.tiny_models import tiny_tokenizer

    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(ConfigError, match="pass a .gguf file"):
        LLM(model=str(folder), deployment_profile="none", quantization_method="gguf", max_model_len=64)
    with pytest.raises(ConfigError, match="float32"):
        LLM(deployment_profile="none", quantization_method="gguf", dtype="bfloat16")
    with pytest.raises(ConfigError, match="drop quantization_bits"):
        LLM(deployment_profile="none", quantization_method="gguf", quantization_bits=8)


def test_default_model_stays_with_its_float32_reference():
    reference = LLM(deployment_profile="none", max_model_len=512)
    candidate = LLM(deployment_profile="none", quantization_method="gguf", max_model_len=512)
    got = teacher_forced(reference, candidate, reference.tokenizer)
    assert got["kl_mean"] < 0.01 and got["top1"] >= 0.95, got


@pytest.mark.parametrize("count", [1, 4, 5, 15, 16, 21, 30, 47])
def test_each_row_is_what_it_is_alone_whatever_the_rows_around_it(tmp_path, count):
    """Rows left over after whole groups of 16 are padded to a group where that is faster: bit for bit
    the same results as one row at a time."""
    llm = LLM(model=str(_gguf(tmp_path, qtype=Q.Q8_0)), deployment_profile="none", quantization_method="gguf")
    layer = llm.engine.runner.model.model.layers[0].mlp.gate_up_proj
    x = torch.randn(count, layer.in_features, generator=torch.Generator().manual_seed(count))
    together = layer(x)
    assert together.shape == (count, layer.out_features)
    for i in range(count):
        assert torch.equal(together[i], layer(x[i : i + 1])[0]), f"row {i} of {count}"
