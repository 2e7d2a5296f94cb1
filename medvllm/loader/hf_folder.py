"""Open a Hugging Face model folder (config.json + safetensors + tokenizer files) as a ModelSource."""

import json
import os
from glob import glob

import transformers
from safetensors import safe_open

from medvllm.errors import ModelLoadError
from medvllm.loader.multimodal import language_model
from medvllm.loader.names import SUPPORTED_ARCHITECTURES, check_complete, expected_names
from medvllm.loader.source import ModelSource

INDEX = "model.safetensors.index.json"


def open_folder(folder: str) -> ModelSource:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelLoadError(
            f"folder {folder} has no config.json, so it is not a Hugging Face model folder; pass a folder "
            f"saved with save_pretrained (config.json, *.safetensors, tokenizer files) or a .gguf file"
        )
    config, rename = language_model(_config(folder))
    shards = _shards(folder)  # file -> {tensor name: shape}
    tokenizer = _tokenizer(folder)
    ours = {file: {n: rename(n) for n in names if rename(n)} for file, names in shards.items()}  # stored -> ours

    present = {ours[file][n]: shape for file, names in shards.items() for n, shape in names.items() if n in ours[file]}
    arch = config.architectures[0]
    if arch in SUPPORTED_ARCHITECTURES:
        check_complete(config, present, folder)
        wanted = set(expected_names(config))  # drops a tied lm_head and stray buffers (rotary inv_freq)
    else:  # the model registry decides whether it can run this; stream everything it stored
        wanted = {n for n in present if not n.endswith("rotary_emb.inv_freq")}
        if config.tie_word_embeddings:
            wanted.discard("lm_head.weight")

    def weights():
        for file, names in ours.items():
            with safe_open(file, framework="pt", device="cpu") as f:
                for stored, name in names.items():
                    if name in wanted:
                        yield name, f.get_tensor(stored)

    dtype = str(getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "").removeprefix("torch.")
    n_files = len(shards)
    text = f"{os.path.basename(os.path.normpath(folder))} (safetensors{', ' + dtype if dtype else ''}"
    text += f", {n_files} shards)" if n_files > 1 else ")"
    return ModelSource(folder, "safetensors", config, tokenizer, text, weights)


def _config(folder: str):
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # transformers raises many types here; all mean the same to the user
        raise ModelLoadError(f"cannot read {folder}/config.json ({_brief(e)}); fix or re-save the config") from None
    if not getattr(config, "architectures", None):
        raise ModelLoadError(
            f'{folder}/config.json names no \'architectures\'; add e.g. "architectures": ["LlamaForCausalLM"] to it'
        )
    return config


def _shards(folder: str) -> dict[str, dict[str, list[int]]]:
    index = os.path.join(folder, INDEX)
    if os.path.isfile(index):
        try:
            with open(index) as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError) as e:
            raise ModelLoadError(f"cannot read {index} ({_brief(e)}); re-save the model") from None
        files = sorted(set(weight_map.values()))
        for name in files:
            if not os.path.isfile(os.path.join(folder, name)):
                raise ModelLoadError(
                    f"shard {name} listed in {index} is missing from {folder}; download the complete model"
                )
        files = [os.path.join(folder, name) for name in files]
    else:
        single = os.path.join(folder, "model.safetensors")
        files = [single] if os.path.isfile(single) else sorted(glob(os.path.join(folder, "*.safetensors")))
    if not files:
        other = [n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".gguf"))]
        hint = f" (found {', '.join(sorted(other))}: only safetensors are read from folders)" if other else ""
        raise ModelLoadError(
            f"folder {folder} has no *.safetensors weights{hint}; save the model with "
            f"save_pretrained(..., safe_serialization=True) or pass a .gguf file"
        )
    shards = {}
    for file in files:
        try:
            with safe_open(file, framework="pt", device="cpu") as f:  # reads the header only
                shards[file] = {name: f.get_slice(name).get_shape() for name in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            raise ModelLoadError(f"{file} is not a readable safetensors file ({_brief(e)}); re-download it") from None
    return shards


def _tokenizer(folder: str):
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # as above: OSError, ValueError, tokenizers' own errors...
        raise ModelLoadError(
            f"cannot load a tokenizer from {folder} ({_brief(e)}); save one next to the model with "
            f"tokenizer.save_pretrained(folder)"
        ) from None
    if not tokenizer.chat_template:  # a multimodal model's processor keeps it in a file of its own
        tokenizer.chat_template = _processor_chat_template(folder)
    if not tokenizer.is_fast:
        raise ModelLoadError(
            f"the tokenizer in {folder} is a slow (Python) tokenizer; save a fast one (tokenizer.json) there"
        )
    return tokenizer


def _processor_chat_template(folder: str) -> str | None:
    path = os.path.join(folder, "chat_template.json")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)["chat_template"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot read the chat template in {path} ({_brief(e)}); fix or remove it") from None


def _brief(error: Exception) -> str:
    """A library's message on one line: ours are printed as one line by the CLI."""
    return " ".join(str(error).split()) or type(error).__name__
