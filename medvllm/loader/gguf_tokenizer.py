"""Build the fast tokenizer a GGUF file describes, from metadata already read.

transformers' `AutoTokenizer.from_pretrained(folder, gguf_file=...)` re-reads the whole file (twice:
once for the config, once for the vocabulary). We hand the metadata we already parsed to the same
converter it uses, so the result is the same tokenizer in a fraction of the time.
"""

import transformers
from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

from medvllm.errors import ModelLoadError

_SPECIAL = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def build_tokenizer(metadata: dict, path: str) -> "transformers.PreTrainedTokenizerFast":
    # mirrors transformers.integrations.gguf.get_gguf_tokenizer, minus its own file read
    groups = {
        group: {hf: metadata[f"tokenizer.{k}"] for k, hf in renames.items() if f"tokenizer.{k}" in metadata}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    vocab, init = groups["tokenizer"], groups["tokenizer_config"]
    if "tokens" not in vocab:
        raise ModelLoadError(
            f"{path} has no tokenizer (no tokenizer.ggml.tokens in its metadata); "
            f"re-convert it with llama.cpp's convert_hf_to_gguf.py, which embeds the tokenizer"
        )
    kind = vocab.get("tokenizer_type")
    if kind == "llama":  # llama.cpp adds BOS to a sentencepiece vocabulary unless told otherwise
        init.setdefault("add_bos_token", True)
    elif kind == "gemma4":
        init["add_bos_token"] = False
    for name, key in _SPECIAL.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        init[name] = vocab["tokens"][token_id] if token_id is not None else None
    try:
        backend, extra = convert_gguf_tokenizer(metadata["general.architecture"], vocab)
    except Exception as e:  # an unknown tokenizer type, or tables that do not fit together
        why = " ".join(str(e).split())  # one line, as the CLI prints it
        raise ModelLoadError(
            f"cannot build the tokenizer stored in {path} ({why}); re-convert the model with a current llama.cpp"
        ) from None
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **init, **extra)
