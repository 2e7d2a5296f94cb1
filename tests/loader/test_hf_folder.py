"""Hugging Face folders: tiny random models saved by transformers stream back the same state dict."""

import json
import os

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, models, pre_tokenizers

from medvllm.errors import ModelLoadError
from medvllm.loader import open_model

SMALL = dict(
    vocab_size=128,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
CASES = {
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=True)),
    "llama_bias_untied": (
        transformers.LlamaConfig,
        dict(attention_bias=True, mlp_bias=True, tie_word_embeddings=False),
    ),
    "mistral": (transformers.MistralConfig, dict(tie_word_embeddings=False)),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32, tie_word_embeddings=False)),
    "qwen3_bias": (transformers.Qwen3Config, dict(head_dim=16, attention_bias=True, tie_word_embeddings=True)),
}


def save_tiny(folder, case="llama", dtype=torch.float32, shard="20KB"):
    cls, extra = CASES[case]
    config = cls(**SMALL, **extra)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).to(dtype)
    model.save_pretrained(folder, max_shard_size=shard)
    vocab = {f"w{i}": i for i in range(SMALL["vocab_size"])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w2"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="w0", eos_token="w1", unk_token="w2"
    )
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("case", list(CASES))
def test_same_state_dict_as_transformers(tmp_path, case):
    model = save_tiny(tmp_path, case)
    assert os.path.isfile(tmp_path / "model.safetensors.index.json")  # sharded: the index path is used
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")

    source = open_model(str(tmp_path))
    got = dict(source.iter_weights())
    assert set(got) == set(expected)
    for name, tensor in got.items():
        assert tensor.dtype == expected[name].dtype and torch.equal(tensor, expected[name]), name

    assert source.format == "safetensors"
    assert source.hf_config.architectures == model.config.architectures
    for field in ("hidden_size", "num_hidden_layers", "num_key_value_heads", "head_dim", "tie_word_embeddings"):
        assert getattr(source.hf_config, field, None) == getattr(model.config, field, None), field
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert source.tokenizer.is_fast and type(source.tokenizer) is type(reference)
    assert source.tokenizer("w5 w7").input_ids == reference("w5 w7").input_ids
    assert source.tokenizer.chat_template == reference.chat_template is not None


def test_single_file_keeps_stored_dtype(tmp_path):
    save_tiny(tmp_path, "qwen2", dtype=torch.bfloat16, shard="1GB")
    assert os.path.isfile(tmp_path / "model.safetensors")
    source = open_model(str(tmp_path))
    assert {t.dtype for _, t in source.iter_weights()} == {torch.bfloat16}
    assert source.description == f"{tmp_path.name} (safetensors, bfloat16)"


def test_stray_tied_head_and_rotary_buffer_are_skipped(tmp_path):
    save_tiny(tmp_path, "llama", shard="1GB")
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # some exporters store it
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)  # older checkpoints did
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    names = {name for name, _ in open_model(str(tmp_path)).iter_weights()}
    assert "lm_head.weight" not in names and not any("inv_freq" in n for n in names)


def test_missing_tensor(tmp_path):
    save_tiny(tmp_path, "llama", shard="1GB")
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=r"model\.layers\.1\.mlp\.up_proj\.weight.*missing"):
        open_model(str(tmp_path))


def test_missing_shard(tmp_path):
    save_tiny(tmp_path, "llama")
    shard = sorted(json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"].values())[0]
    os.remove(tmp_path / shard)
    with pytest.raises(ModelLoadError, match=f"shard {shard} .* missing"):
        open_model(str(tmp_path))


def test_folder_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ModelLoadError, match="no config.json"):
        open_model(str(tmp_path))


def test_folder_without_weights(tmp_path):
    save_tiny(tmp_path, "llama")
    for name in os.listdir(tmp_path):
        if "safetensors" in name:
            os.remove(tmp_path / name)
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"no \*\.safetensors weights.*pytorch_model\.bin"):
        open_model(str(tmp_path))


def test_folder_without_tokenizer(tmp_path):
    save_tiny(tmp_path, "llama")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        if os.path.exists(tmp_path / name):
            os.remove(tmp_path / name)
    with pytest.raises(ModelLoadError, match="tokenizer"):
        open_model(str(tmp_path))


def test_config_that_does_not_match_the_weights(tmp_path):
    save_tiny(tmp_path, "llama")
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 128
    (tmp_path / "config.json").write_text(json.dumps(config))
    expected = r"gate_proj\.weight.* shape \(96, 64\), but its config implies \(128, 64\)"
    with pytest.raises(ModelLoadError, match=expected):
        open_model(str(tmp_path))
