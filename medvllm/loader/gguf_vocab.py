"""The `tokenizers.Tokenizer` a GGUF vocabulary describes, built directly (no transformers import).

Three kinds are built here, each the same tokenizer transformers' GGUF converter makes from the same
metadata (tests/loader/test_gguf_tokenizer.py compares the two, JSON for JSON):

- `gpt2`: byte-level BPE with the file's merges, split the way `tokenizer.ggml.pre` says (GPT2Tokenizer);
- `llama`: sentencepiece BPE with byte fallback and Metaspace, merges from the file or implied by the
  scores (LlamaTokenizer);
- `llama` under a Gemma architecture: spaces spelled as "▁" by a normalizer, a Split pre-tokenizer, and
  merges implied by the vocabulary's order (GemmaTokenizer).

Each also gets what the converter adds on top: its class's default special tokens, the file's control
tokens as special added tokens and its user-defined tokens as plain added tokens.
"""

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from medvllm.loader.bpe_merges import generate_merges

CONTROL, USER_DEFINED = 3, 4  # llama.cpp's token types
GEMMA_ARCHS = ("gemma", "gemma2", "gemma3")

# the default special tokens of the transformers class each kind is (added before the file's own)
_CLASS_SPECIALS = {
    "gpt2": ["<|endoftext|>"],
    "llama": ["<s>", "</s>", "<unk>"],
    "gemma": ["<bos>", "<eos>", "<unk>", "<pad>", "<mask>"],
}

_LLAMA3 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN35 = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}"
    r"| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre -> the regex its merges were learned with (others keep ByteLevel's own GPT-2 split)
SPLITS = {
    **dict.fromkeys(
        ("llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2"), _LLAMA3
    ),
    **dict.fromkeys(("jina-v5-nano", "dbrx", "smaug-bpe"), _LLAMA3),
    "tekken": _TEKKEN,
    **dict.fromkeys(("qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"), _QWEN2),
    "qwen35": _QWEN35,
    **dict.fromkeys(("gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"), _GPT4O),
}


def native_kind(architecture: str, model: str | None) -> str | None:
    """Which of the builders here makes this file's tokenizer; None: transformers' converter does."""
    if model == "gpt2":
        return "gpt2"
    if model == "llama" and architecture in GEMMA_ARCHS:
        return "gemma"
    if model == "llama" and architecture != "phi3":  # phi3 prepends its space with a normalizer
        return "llama"
    return None


def build_backend(kind: str, metadata: dict) -> Tokenizer:
    tokens = metadata["tokenizer.ggml.tokens"]
    if kind == "gpt2":
        backend, vocab = _byte_level(tokens, _file_merges(metadata))
    elif kind == "gemma":
        spelled = ["\u2581" * len(t) if " " in t and not t.strip() else t for t in tokens]  # "  " -> "▁▁"
        # no merges in Gemma files; its scores do not follow the merge order, the vocabulary's order does
        backend, vocab = _sentencepiece(spelled, metadata, lambda: range(0, -len(spelled), -1), "<unk>")
        backend.normalizer = normalizers.Replace(" ", "\u2581")
        backend.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous", invert=False)
        backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    else:
        backend, vocab = _sentencepiece(tokens, metadata, lambda: _scores(metadata), None)
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=False)
        backend.decoder = decoders.Sequence(
            [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
        )
    backend.add_tokens([AddedToken(t, special=True) for t in _CLASS_SPECIALS[kind]])
    _add_file_tokens(backend, vocab, tokens, metadata.get("tokenizer.ggml.token_type") or (), kind == "gpt2")
    split = SPLITS.get(metadata.get("tokenizer.ggml.pre"))
    if split is not None:
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(split), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    return backend


def _byte_level(tokens: list[str], merges: list[tuple]) -> tuple[Tokenizer, dict]:
    spelling = byte_spelling()
    alphabet = set(spelling)
    vocab = {
        token if alphabet.issuperset(token) else "".join(spelling[b] for b in token.encode("utf-8")): index
        for index, token in enumerate(tokens)
    }
    model = models.BPE(
        vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
    )
    backend = Tokenizer(model)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return backend, vocab


def _sentencepiece(tokens: list[str], metadata: dict, scores, unk: str | None) -> tuple[Tokenizer, dict]:
    """BPE with byte fallback; merges from the file, else implied by `scores()` (one per token, best highest)."""
    vocab = {token: index for index, token in enumerate(tokens)}
    merges = _file_merges(metadata) if "tokenizer.ggml.merges" in metadata else generate_merges(vocab, scores())
    model = models.BPE(vocab=vocab, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None)
    return Tokenizer(model), vocab


def _file_merges(metadata: dict) -> list[tuple]:
    return [tuple(merge.split(" ")) for merge in metadata.get("tokenizer.ggml.merges") or ()]


def _scores(metadata: dict) -> list[float]:
    if "tokenizer.ggml.scores" not in metadata:
        raise ValueError("the file has neither tokenizer.ggml.merges nor tokenizer.ggml.scores to derive them from")
    return metadata["tokenizer.ggml.scores"]


def _add_file_tokens(backend: Tokenizer, vocab: dict, tokens: list[str], types, byte_level: bool) -> None:
    """Control tokens (`<|im_end|>`) as special added tokens, user-defined ones (`<think>`) as plain ones, so
    neither is cut into pieces. In a byte-level vocabulary a "control" token spelled outside the byte
    alphabet is a llama.cpp mislabel: adding it would grow the vocabulary past the model's, so it is not."""
    alphabet = set(byte_spelling()) if byte_level else None
    control = [
        AddedToken(token, normalized=False, special=True)
        for token, kind in zip(tokens, types)
        if kind == CONTROL and (alphabet is None or alphabet.issuperset(token))
    ]
    if control:
        backend.add_special_tokens(control)
    user = [t for t, kind in zip(tokens, types) if kind == USER_DEFINED]
    if user:
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        known = [t for t in user if t in vocab or t in added]  # the vocabulary as it stands, added tokens too
        backend.add_tokens([AddedToken(t, normalized=False, special=False) for t in known])


def byte_spelling() -> list[str]:
    """GPT-2's printable spelling of each byte value (index = byte)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    spelled, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in spelled:
            spelled[b] = chr(256 + extra)
            extra += 1
    return [spelled[b] for b in range(256)]
