"""The embedded default model, checked against transformers' own GGUF loading of the same file."""

import os

import pytest
import torch
import transformers

from medvllm.loader import default_model_path, open_model

pytestmark = pytest.mark.slow

SENTENCES = [
    "Patient is a 67-year-old male with type 2 diabetes mellitus, HbA1c 8.2%.",
    "Administer 0.9% NaCl 500 mL IV over 30 min; recheck BP (140/90 mmHg) q15min.",
    "Dx: community-acquired pneumonia — start amoxicillin 1 g PO TID × 5 days.",
    "  Leading spaces,\ttabs\nand newlines\n\n and <|im_end|> special tokens.",
]
CHAT = [
    {"role": "system", "content": "You are a careful clinical assistant."},
    {"role": "user", "content": "What are the first-line treatments for hypertension?"},
    {"role": "assistant", "content": "Thiazide diuretics, ACE inhibitors, ARBs or calcium channel blockers."},
    {"role": "user", "content": "And in pregnancy?"},
]


@pytest.fixture(scope="module")
def source():
    return open_model(None)


@pytest.fixture(scope="module")
def reference():
    folder, name = os.path.split(default_model_path())
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, local_files_only=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    return model, tokenizer


def test_default_path_is_the_embedded_gguf():
    path = default_model_path()
    assert os.path.isfile(path) and path.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")


def test_description_and_format(source):
    assert source.format == "gguf"
    assert source.description == "SmolLM2-135M-Instruct.Q4_1.gguf (gguf, Q4_1)"
    assert source.hf_config.architectures == ["LlamaForCausalLM"]


def test_weights_equal_transformers(source, reference):
    expected = reference[0].state_dict()
    assert source.hf_config.tie_word_embeddings
    expected.pop("lm_head.weight")  # tied: transformers lists it, we do not stream it
    seen = set()
    for name, tensor in source.iter_weights():
        assert name not in seen, f"{name} yielded twice"
        seen.add(name)
        assert tensor.dtype == torch.float32 and tensor.device.type == "cpu", name
        assert torch.equal(tensor, expected[name]), name
    assert seen == set(expected)


def test_iter_weights_restarts(source):
    first = next(iter(source.iter_weights()))
    again = next(iter(source.iter_weights()))
    assert first[0] == again[0] and torch.equal(first[1], again[1])


def test_config_matches_transformers(source, reference):
    ours, theirs = source.hf_config, reference[0].config
    for field in (
        "hidden_size",
        "intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "rms_norm_eps",
        "vocab_size",
        "tie_word_embeddings",
        "max_position_embeddings",
        "bos_token_id",
        "eos_token_id",
        "model_type",
    ):
        assert getattr(ours, field) == getattr(theirs, field), field
    assert ours.rope_parameters["rope_theta"] == theirs.rope_parameters["rope_theta"] == 100000.0
    assert ours.rope_parameters["rope_type"] == theirs.rope_parameters["rope_type"] == "default"


def test_tokenizer_matches_transformers(source, reference):
    ours, theirs = source.tokenizer, reference[1]
    assert ours.is_fast and len(ours) == len(theirs)
    for text in SENTENCES:
        assert ours(text).input_ids == theirs(text).input_ids, text
        ids = ours(text).input_ids
        assert ours.decode(ids) == theirs.decode(ids)
    assert ours.chat_template and ours.chat_template == theirs.chat_template
    for prompt in (CHAT, CHAT[1:2]):
        ours_ids = ours.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        theirs_ids = theirs.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
        assert ours_ids == theirs_ids
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "all_special_ids"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr


def _resident_bytes_of(path: str) -> int:
    """RSS this process holds in mappings of `path` (from /proc/self/smaps)."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            fields = line.split()
            if "-" in fields[0] and not fields[0].endswith(":"):
                inside = fields[-1] == path
            elif inside and fields[0] == "Rss:":
                total += int(fields[1]) * 1024
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/smaps"), reason="reads Linux's /proc/self/smaps")
def test_streamed_gguf_pages_do_not_stay_resident():
    """The weights stream drops each tensor's mapped pages once consumed: they would otherwise sit in
    the RSS (93 MB on the default model) next to the weights built from them."""
    path = os.path.realpath(default_model_path())
    before = _resident_bytes_of(path)  # maps of the file that earlier tests' objects still hold
    src = open_model(None)
    for _, tensor in src.iter_weights():
        del tensor
    assert _resident_bytes_of(path) - before < 0.05 * os.path.getsize(path)
