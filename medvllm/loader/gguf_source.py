"""Open a single .gguf file as a ModelSource."""

import os
import threading
from collections import Counter
from concurrent.futures import Future

import torch
from gguf import LlamaFileType

from medvllm.errors import ModelLoadError
from medvllm.loader.gguf_blocks import BlockTensor
from medvllm.loader.gguf_config import PERMUTED_QK, build_config, gguf_architecture
from medvllm.loader.gguf_file import GGUFFile
from medvllm.loader.gguf_names import GEMMA_ARCHS, gguf_name, hf_name
from medvllm.loader.gguf_tokenizer import build_tokenizer
from medvllm.loader.gguf_weights import dequantize, unpermute_qk
from medvllm.loader.names import check_complete
from medvllm.loader.source import ModelSource

ROPE_FREQS = "rope_freqs.weight"  # Llama 3 rope scaling, as llama.cpp stores it


def open_gguf(path: str) -> ModelSource:
    f = GGUFFile(path)
    arch = gguf_architecture(f.metadata, path)
    rope = f.tensors.get(ROPE_FREQS)
    rope_factors = dequantize(f.raw(rope), rope.qtype).numpy() if rope else None
    config = build_config(f.metadata, set(f.tensors), path, rope_factors)

    names = {}  # HF name -> GGUF tensor, in file order
    for name in f.tensors:
        if name == ROPE_FREQS:  # folded into config.rope_parameters above
            continue
        hf = hf_name(name, arch)
        if hf is None:
            raise ModelLoadError(
                f"GGUF tensor {name!r} in {path} has no place in a {config.architectures[0]}; the file "
                f"holds a variant this loader does not support, use a plain {arch} GGUF"
            )
        if hf == "lm_head.weight" and config.tie_word_embeddings:
            continue
        names[hf] = f.tensors[name]
    check_complete(
        config, {hf: info.shape for hf, info in names.items()}, path, stored_as=lambda hf: gguf_name(hf, arch)
    )

    heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    def decoded(hf, info):
        raw = f.raw(info)
        # each slice's file pages go as soon as it is decoded, so a large table's pages never all stay resident
        tensor = dequantize(raw, info.qtype, lambda start, stop: f.release_rows(info, raw.shape[-1], start, stop))
        f.release(info)
        proj = hf.split(".")[-2]
        if arch in PERMUTED_QK and proj in heads:
            tensor = unpermute_qk(tensor, heads[proj])
        if arch in GEMMA_ARCHS and hf.endswith("norm.weight"):
            # llama.cpp's converter stores Gemma's norm weights as 1 + w, where the model (and transformers'
            # GGUF loader, which subtracts 1 back) keeps w: the same float32 subtraction gives the same numbers
            tensor = tensor.float() - 1.0
        return tensor

    def as_blocks(hf, info):
        # copied once out of the map (whose pages then go): the engine keeps these bytes as they are
        rows = torch.from_numpy(f.raw(info).reshape(info.shape[0], -1).copy())
        blocks = BlockTensor(info.qtype, rows, torch.Size(info.shape))
        f.release(info)
        proj = hf.split(".")[-2]
        if arch in PERMUTED_QK and proj in heads:
            # the same row order unpermute_qk gives the float rows: whole rows of blocks move
            order = unpermute_qk(torch.arange(info.shape[0]), heads[proj])
            blocks = blocks.take_rows(order)
        return blocks

    def weights(blocks: bool = False):
        for hf, info in names.items():
            # no local keeps the tensor while the loader holds it: once copied, the loader's quantizing
            # step (quantize_while_loading) frees the float copy before it makes the int8 one
            if blocks and len(info.shape) == 2:
                yield hf, as_blocks(hf, info)
            else:
                yield hf, decoded(hf, info)
        f.release_all()

    def tokenizer():
        try:
            return build_tokenizer(f.metadata, path)
        finally:
            f.release_metadata()  # parsed into Python objects when the file was opened

    quant = _quant_label(f)
    # Gemma's 262k-token vocabulary takes ~1 s to build: it is built while the engine loads the weights
    return ModelSource(
        path, "gguf", config, _in_background(tokenizer), f"{os.path.basename(path)} (gguf, {quant})", weights
    )


def _in_background(build) -> Future:
    """build() on a thread of its own; the Future holds its result or what it raised."""
    future = Future()

    def run():
        try:
            future.set_result(build())
        except BaseException as e:  # handed to whoever reads the result, as raised
            future.set_exception(e)

    threading.Thread(target=run, name="medvllm-tokenizer", daemon=True).start()
    return future


def _quant_label(f: GGUFFile) -> str:
    """The file type llama.cpp recorded (e.g. Q4_K_M), else the most common weight type."""
    file_type = f.metadata.get("general.file_type")
    if file_type is not None:
        try:
            return LlamaFileType(file_type).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    types = Counter(info.qtype.name for info in f.tensors.values() if len(info.shape) == 2)
    return types.most_common(1)[0][0] if types else "unknown"
