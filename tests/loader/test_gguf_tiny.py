"""Tiny GGUF files written here with gguf.GGUFWriter from random transformers models.

Names come from gguf's own tensor map and Q/K rows are permuted the way llama.cpp's converter does, so
loading must undo both; values are checked against the original model and against transformers.
"""

import math

import numpy as np
import pytest
import torch
import transformers
from gguf import MODEL_ARCH, GGMLQuantizationType as Q, GGUFWriter, RopeScalingType, get_tensor_name_map
from gguf.quants import dequantize as gguf_dequantize, quantize
from transformers.convert_slow_tokenizer import bytes_to_unicode

from medvllm.errors import ModelLoadError
from medvllm.loader import open_model
from medvllm.loader.gguf_weights import dequantize

BYTES = list(bytes_to_unicode().values())
TOKENS = BYTES + ["Ġt", "he", "<|end|>"]
MERGES = ["Ġ t", "h e"]
SMALL = dict(
    vocab_size=len(TOKENS),
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
)
ARCHS = {  # gguf arch -> (HF config class, extra config, gguf enum)
    "llama": (transformers.LlamaConfig, dict(tie_word_embeddings=True), MODEL_ARCH.LLAMA),
    "qwen2": (transformers.Qwen2Config, dict(tie_word_embeddings=False), MODEL_ARCH.QWEN2),
    "qwen3": (transformers.Qwen3Config, dict(head_dim=32, tie_word_embeddings=False), MODEL_ARCH.QWEN3),
}
MAX_ERROR = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 1e-2, Q.Q8_0: 2e-2, Q.Q5_0: 0.1, Q.Q4_0: 0.2, Q.Q4_1: 0.2}


def tiny_model(arch):
    cls, extra, _ = ARCHS[arch]
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cls(**SMALL, **extra))


def llama_cpp_permute(w, n_head):
    # convert_hf_to_gguf.py LlamaModel.permute
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_gguf(path, model, arch, qtype=Q.F32, skip=(), extra_tensors=None, rope=None, arch_name=None):
    """Write `model` the way llama.cpp would; 2-D weights in `qtype`, norms in F32."""
    cfg = model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    w = GGUFWriter(str(path), arch_name or arch)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    for key, value in (rope or {}).items():
        getattr(w, f"add_rope_scaling_{key}")(value)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(TOKENS)
    w.add_token_types([1] * (len(TOKENS) - 1) + [3])
    w.add_token_merges(MERGES)
    w.add_bos_token_id(len(TOKENS) - 1)
    w.add_eos_token_id(len(TOKENS) - 1)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}<|end|>{% endfor %}")

    names = get_tensor_name_map(ARCHS[arch][2], cfg.num_hidden_layers)
    for hf, tensor in model.state_dict().items():
        if hf == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        base, suffix = hf.rsplit(".", 1)
        name = f"{names.get_name(base)}.{suffix}"
        if name in skip:
            continue
        array = tensor.numpy()
        if arch == "llama" and ".attn_q." in name:
            array = llama_cpp_permute(array, cfg.num_attention_heads)
        if arch == "llama" and ".attn_k." in name:
            array = llama_cpp_permute(array, cfg.num_key_value_heads)
        t = qtype if array.ndim == 2 else Q.F32
        w.add_tensor(name, quantize(array, t), raw_dtype=t)
    for name, array in (extra_tensors or {}).items():
        w.add_tensor(name, array)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def round_trip(array, qtype):
    """What a `qtype` tensor of these values decodes to (gguf's numpy reference)."""
    if array.ndim != 2:
        return array
    return gguf_dequantize(quantize(array, qtype), qtype)


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_names_shapes_values(tmp_path, arch, qtype):
    model = tiny_model(arch)
    source = open_model(str(write_gguf(tmp_path / "tiny.gguf", model, arch, qtype)))
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    got = dict(source.iter_weights())
    assert set(got) == set(expected)
    for name, tensor in got.items():
        original = expected[name]
        assert tensor.dtype == torch.float32 and tensor.shape == original.shape, name
        # exact against the quantization round trip (Q/K permutation undone), close to the original
        assert torch.equal(tensor, torch.from_numpy(round_trip(original.numpy(), qtype))), name
        scale = original.abs().max().item()
        assert (tensor - original).abs().max().item() <= MAX_ERROR[qtype] * scale + 1e-7, name
    assert source.description == f"tiny.gguf (gguf, {qtype.name})"


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_same_as_transformers_gguf_loading(tmp_path, arch):
    path = write_gguf(tmp_path / "tiny.gguf", tiny_model(arch), arch, Q.Q8_0)
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file="tiny.gguf", local_files_only=True
    )
    source = open_model(str(path))
    expected = reference.state_dict()
    if reference.config.tie_word_embeddings:
        expected.pop("lm_head.weight")
    got = dict(source.iter_weights())
    assert set(got) == set(expected)
    for name, tensor in got.items():
        assert torch.equal(tensor, expected[name]), name
    for field in (
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "rms_norm_eps",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
    ):
        assert getattr(source.hf_config, field) == getattr(reference.config, field), field
    assert source.hf_config.rope_parameters["rope_theta"] == reference.config.rope_parameters["rope_theta"]

    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf", local_files_only=True)
    for text in ("the patient<|end|>", " tthe  he\n"):
        assert source.tokenizer(text).input_ids == tokenizer(text).input_ids
    chat = [{"role": "user", "content": "the"}]
    assert source.tokenizer.apply_chat_template(chat) == tokenizer.apply_chat_template(chat)["input_ids"]


def test_config_fields(tmp_path):
    model = tiny_model("qwen3")
    source = open_model(str(write_gguf(tmp_path / "t.gguf", model, "qwen3")))
    cfg = source.hf_config
    assert cfg.architectures == ["Qwen3ForCausalLM"] and cfg.head_dim == 32
    assert cfg.num_attention_heads == 4 and cfg.num_key_value_heads == 2 and not cfg.tie_word_embeddings
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 10000.0}
    assert cfg.bos_token_id == cfg.eos_token_id == len(TOKENS) - 1
    assert source.tokenizer.eos_token == "<|end|>" and source.tokenizer.chat_template


def test_rope_scaling(tmp_path):
    model = tiny_model("qwen2")
    rope = {"type": RopeScalingType.YARN, "factor": 4.0, "orig_ctx_len": 64}
    cfg = open_model(str(write_gguf(tmp_path / "y.gguf", model, "qwen2", rope=rope))).hf_config
    assert cfg.rope_parameters == {
        "rope_type": "yarn",
        "rope_theta": 10000.0,
        "factor": 4.0,
        "original_max_position_embeddings": 64,
    }
    linear = {"type": RopeScalingType.LINEAR, "factor": 2.0}
    cfg = open_model(str(write_gguf(tmp_path / "l.gguf", model, "qwen2", rope=linear)))
    assert cfg.hf_config.rope_parameters == {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}


def llama_cpp_rope_factors(theta, dim, factor, low, high, context):
    # convert_hf_to_gguf.py LlamaModel.generate_extra_tensors, for rope_type llama3
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factors = []
    for freq in freqs.tolist():
        wavelen = 2 * math.pi / freq
        if wavelen < context / high:
            factors.append(1)
        elif wavelen > context / low:
            factors.append(factor)
        else:
            smooth = (context / wavelen - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)


@pytest.mark.parametrize("head_dim,theta,factor,context", [(16, 10000.0, 8.0, 64), (128, 500000.0, 32.0, 8192)])
def test_llama3_rope_freqs(tmp_path, head_dim, theta, factor, context):
    rope = dict(
        rope_type="llama3",
        rope_theta=theta,
        factor=factor,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=context,
    )
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        **(SMALL | dict(num_attention_heads=2, num_key_value_heads=1)), head_dim=head_dim, rope_parameters=rope
    )
    model = transformers.LlamaForCausalLM(config)
    factors = llama_cpp_rope_factors(theta, head_dim, factor, 1.0, 4.0, context)
    path = write_gguf(tmp_path / "r.gguf", model, "llama", extra_tensors={"rope_freqs.weight": factors})
    source = open_model(str(path))
    ours = source.hf_config.rope_parameters
    assert ours["rope_type"] == "llama3" and ours["factor"] == factor
    llama3 = transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS["llama3"]
    as_transformers = transformers.LlamaConfig(**source.hf_config.to_dict())  # its rope code wants its own class
    torch.testing.assert_close(llama3(as_transformers, "cpu")[0], llama3(config, "cpu")[0], rtol=1e-5, atol=0)
    assert "rope_freqs.weight" not in dict(source.iter_weights())

    bad = factors.copy()
    bad[len(bad) // 2] *= 3
    path = write_gguf(tmp_path / "bad.gguf", model, "llama", extra_tensors={"rope_freqs.weight": bad})
    with pytest.raises(ModelLoadError, match="rope_freqs.weight .*Llama 3"):
        open_model(str(path))


@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1])
@pytest.mark.parametrize("rows_at_once", [None, 5])
def test_fast_dequantize_is_bit_identical_to_gguf(qtype, rows_at_once, monkeypatch):
    if rows_at_once:  # big tensors are decoded a slice of rows at a time: slices of 5 rows, the last short
        import medvllm.loader.gguf_weights as gguf_weights

        monkeypatch.setattr(
            gguf_weights,
            "ROW_BYTES_AT_ONCE",
            rows_at_once * quantize(np.zeros((1, 256), np.float32), qtype).view(np.uint8).shape[-1],
        )
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((64, 256)) * rng.uniform(0.01, 10, (64, 1))).astype(np.float32)
    raw = quantize(array, qtype)
    raw = raw.view(np.uint8) if raw.dtype != np.uint8 else raw
    ours = dequantize(raw, qtype)
    reference = torch.from_numpy(gguf_dequantize(raw, qtype).copy())
    assert ours.shape == (64, 256) and torch.equal(ours.view(torch.int32), reference.view(torch.int32))


# --- errors -------------------------------------------------------------------------------------------


def test_not_a_gguf_file(tmp_path):
    path = tmp_path / "notes.gguf"
    path.write_text("patient notes, not a model")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        open_model(str(path))
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        open_model(str(empty))


@pytest.mark.parametrize("keep", [0.01, 0.5, 0.99])
def test_truncated_gguf(tmp_path, keep):
    data = write_gguf(tmp_path / "full.gguf", tiny_model("llama"), "llama").read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: max(8, int(len(data) * keep))])
    with pytest.raises(ModelLoadError, match="corrupt or truncated"):
        open_model(str(cut))


def test_unsupported_architecture(tmp_path):
    path = write_gguf(tmp_path / "g.gguf", tiny_model("llama"), "llama", arch_name="gpt2")
    with pytest.raises(ModelLoadError, match="'gpt2' .*not supported.*llama, mistral, qwen2, qwen3"):
        open_model(str(path))


def test_missing_tensor(tmp_path):
    path = write_gguf(tmp_path / "m.gguf", tiny_model("llama"), "llama", skip={"blk.1.ffn_up.weight"})
    with pytest.raises(ModelLoadError, match=r"'blk\.1\.ffn_up\.weight' \(for model\.layers\.1\.mlp\.up_proj"):
        open_model(str(path))


def test_unknown_tensor(tmp_path):
    extra = {"blk.0.ffn_gate_exps.weight": np.zeros((2, 4), np.float32)}
    path = write_gguf(tmp_path / "u.gguf", tiny_model("llama"), "llama", extra_tensors=extra)
    with pytest.raises(ModelLoadError, match="ffn_gate_exps"):
        open_model(str(path))
