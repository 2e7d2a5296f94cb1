"""Build the tokenizer a GGUF file describes, from metadata already read, as a TextTokenizer.

The common kinds (byte-level BPE, sentencepiece BPE, Gemma's) are built directly with the `tokenizers`
library (gguf_vocab.py): the same tokenizer transformers' GGUF converter makes, without importing
transformers (about a second) or its Python merge generation (seconds on Gemma's 262k vocabulary).
Other kinds (t5, phi3's sentencepiece variant, gemma4, anything new) still go through that converter.
"""

import gc
from contextlib import contextmanager

from tokenizers import AddedToken, processors

from medvllm.errors import ModelLoadError
from medvllm.loader.gguf_vocab import build_backend, native_kind
from medvllm.loader.text_tokenizer import SPECIAL_NAMES, TextTokenizer

_SPECIAL_IDS = {  # TextTokenizer's name -> llama.cpp's key
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def build_tokenizer(metadata: dict, path: str) -> TextTokenizer:
    tokens = metadata.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ModelLoadError(
            f"{path} has no tokenizer (no tokenizer.ggml.tokens in its metadata); "
            f"re-convert it with llama.cpp's convert_hf_to_gguf.py, which embeds the tokenizer"
        )
    flags = {
        k: metadata[f"tokenizer.ggml.{k}"]
        for k in ("add_bos_token", "add_eos_token")
        if f"tokenizer.ggml.{k}" in metadata
    }
    model = metadata.get("tokenizer.ggml.model")
    if model == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary unless told otherwise
        flags.setdefault("add_bos_token", True)
    elif model == "gemma4":  # its chat template writes <bos> itself
        flags["add_bos_token"] = False
    try:
        special = {name: _token(tokens, metadata.get(f"tokenizer.ggml.{key}")) for name, key in _SPECIAL_IDS.items()}
        kind = native_kind(metadata.get("general.architecture"), model)
        if kind is None:
            return _converted(metadata, special, flags)
        with _gc_paused():  # hundreds of thousands of strings and tuples: no collections while they are made
            backend = build_backend(kind, metadata)
            add_bos, add_eos = _finish(backend, special, flags)
    except Exception as e:  # an unknown tokenizer type, or tables that do not fit together
        why = " ".join(str(e).split())  # one line, as the CLI prints it
        raise ModelLoadError(
            f"cannot build the tokenizer stored in {path} ({why}); re-convert the model with a current llama.cpp"
        ) from None
    return TextTokenizer(
        backend,
        **special,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        chat_template=metadata.get("tokenizer.chat_template"),
    )


def _token(tokens: list[str], token_id: int | None) -> str | None:
    return tokens[token_id] if token_id is not None else None


def _finish(backend, special: dict, flags: dict) -> tuple[bool, bool]:
    """What transformers' tokenizer does with the backend it is given: the named special tokens join the
    added tokens (if not there yet), and the post-processor adds BOS/EOS as the flags say."""
    added = {t.content for t in backend.get_added_tokens_decoder().values()}
    missing = [t for t in dict.fromkeys(special[name] for name in SPECIAL_NAMES) if t is not None and t not in added]
    if missing:
        backend.add_tokens([AddedToken(t, special=True) for t in missing])
    bos, eos = special["bos_token"], special["eos_token"]
    add_bos = bool(flags.get("add_bos_token", False)) and bos is not None
    add_eos = bool(flags.get("add_eos_token", False)) and eos is not None
    single = f"{f'{bos}:0 ' if add_bos else ''}$A:0{f' {eos}:0' if add_eos else ''}"
    pair = f"{single}{f' {bos}:1' if add_bos else ''} $B:1{f' {eos}:1' if add_eos else ''}"
    ids = [(bos, backend.token_to_id(bos))] if add_bos else []
    ids += [(eos, backend.token_to_id(eos))] if add_eos else []
    backend.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=ids)
    return add_bos, add_eos


def _converted(metadata: dict, special: dict, flags: dict) -> TextTokenizer:
    """transformers' converter, for the kinds not built here (it imports transformers: about a second)."""
    import transformers
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    vocab = {
        hf: metadata[f"tokenizer.{k}"]
        for k, hf in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if f"tokenizer.{k}" in metadata
    }
    backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], vocab)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **flags, **special, **extra)
    return TextTokenizer(
        hf.backend_tokenizer,
        **special,
        add_bos_token=hf.add_bos_token,
        add_eos_token=hf.add_eos_token,
        chat_template=metadata.get("tokenizer.chat_template"),
    )


@contextmanager
def _gc_paused():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
