"""A ~1.1B-parameter Llama with random weights in TinyLlama-1.1B's shape, written as a GGUF file locally.

The benchmarks need a second, larger model than the embedded 135M one, and nothing may download a
model: this writes one from a fixed seed (weights ~ N(0, 0.02), norms = 1) with the embedded model's
tokenizer (SmolLM2's, vocabulary 49152, copied from its GGUF metadata), untied embeddings and an output
tensor, quantized like the default file (Q4_1 Linear weights, Q8_0 token embeddings and output). The
gguf package cannot quantize K-quants in Python, so Q4_0 and Q8_0 are the other choices. Q/K rows are
stored permuted as llama.cpp's converter stores them, so the file loads like a converted one.

Written once into the bench cache (~/.cache/medvllm-bench, MEDVLLM_BENCH_CACHE) under a name keyed by
every parameter, then reused; a tensor at a time, so memory stays near the largest tensor.

    python benchmarks/llama_1b.py [--quant Q4_1] [--out FILE]     # prints the file's path
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np
import torch
from gguf import GGMLQuantizationType as Q, GGUFValueType as V, GGUFWriter, LlamaFileType
from gguf.quants import quant_shape_to_byte_shape, quantize

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
from common import cache_dir  # noqa: E402

# TinyLlama-1.1B's shape (its config.json); the vocabulary is the tokenizer's
TINYLLAMA = dict(hidden=2048, layers=22, heads=32, kv_heads=4, intermediate=5632, rope_theta=10000.0, context=2048)
QUANTS = {"Q4_1": LlamaFileType.MOSTLY_Q4_1, "Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q8_0": LlamaFileType.MOSTLY_Q8_0}
SEED, STD = 0, 0.02
VERSION = 1  # bump when the bytes written change, so an old cached file is not reused
ROWS_AT_ONCE = 4096  # floats in flight per tensor: a slice of rows, not the whole embedding table


def tensor_plan(shape: dict, vocab: int, quant: str) -> list[tuple[str, tuple[int, ...], Q]]:
    """(GGUF name, torch shape, stored type) in the order llama.cpp's converter writes a Llama."""
    h, kv = shape["hidden"], shape["hidden"] // shape["heads"] * shape["kv_heads"]
    linear, table = Q[quant], Q.Q8_0  # embeddings and the head in Q8_0, as the default file has them
    plan = [("token_embd.weight", (vocab, h), table)]
    for i in range(shape["layers"]):
        b = f"blk.{i}."
        plan += [
            (b + "attn_norm.weight", (h,), Q.F32),
            (b + "attn_q.weight", (h, h), linear),
            (b + "attn_k.weight", (kv, h), linear),
            (b + "attn_v.weight", (kv, h), linear),
            (b + "attn_output.weight", (h, h), linear),
            (b + "ffn_norm.weight", (h,), Q.F32),
            (b + "ffn_gate.weight", (shape["intermediate"], h), linear),
            (b + "ffn_up.weight", (shape["intermediate"], h), linear),
            (b + "ffn_down.weight", (h, shape["intermediate"]), linear),
        ]
    return plan + [("output_norm.weight", (h,), Q.F32), ("output.weight", (vocab, h), table)]


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf LlamaModel.permute: each head's rotary halves interleaved."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def tensor_data(index: int, name: str, shape: tuple[int, ...], qtype: Q, model: dict, seed: int, std: float):
    """The stored bytes of one tensor: norms are ones, the rest N(0, std) from a per-tensor seed, quantized
    a slice of rows at a time (Q and K whole, since their rows are permuted within a head)."""
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    gen = torch.Generator().manual_seed(seed * 100_003 + index)  # torch's randn: ~4x numpy's speed
    heads = {"attn_q": model["heads"], "attn_k": model["kv_heads"]}.get(name.split(".")[-2])
    if heads is not None:
        return quantize(permute((torch.randn(shape, generator=gen) * std).numpy(), heads), qtype)
    out = np.empty(quant_shape_to_byte_shape(shape, qtype), dtype=np.uint8)
    for start in range(0, shape[0], ROWS_AT_ONCE):
        rows = min(ROWS_AT_ONCE, shape[0] - start)
        out[start : start + rows] = quantize((torch.randn(rows, shape[1], generator=gen) * std).numpy(), qtype)
    return out


def tokenizer_metadata(path: str | None = None) -> dict:
    """Every tokenizer.* key of a GGUF file (default: the embedded model), read with our own reader."""
    from medvllm.loader import default_model_path
    from medvllm.loader.gguf_file import GGUFFile

    meta = GGUFFile(path or default_model_path()).metadata
    return {k: v for k, v in meta.items() if k.startswith("tokenizer.")}


def _typed(value):
    """GGUF value type (and array item type) of a metadata value, as llama.cpp's converter types them."""
    for kind, vtype in ((bool, V.BOOL), (int, V.UINT32), (float, V.FLOAT32), (str, V.STRING)):
        if isinstance(value, kind):
            return vtype, None
    first = value[0] if value else ""
    item = V.STRING if isinstance(first, str) else V.FLOAT32 if isinstance(first, float) else V.INT32
    return V.ARRAY, item


def write(path: str, shape: dict = TINYLLAMA, quant: str = "Q4_1", seed: int = SEED, std: float = STD) -> None:
    """Writes the model to `path` (via `path`.partial, so a killed run leaves no half file behind)."""
    tok = tokenizer_metadata()
    vocab = len(tok["tokenizer.ggml.tokens"])
    head_dim = shape["hidden"] // shape["heads"]
    partial = path + ".partial"
    w = GGUFWriter(partial, "llama")
    w.add_name(f"random Llama {shape['layers']}x{shape['hidden']} (TinyLlama-1.1B shape), seed {seed}")
    w.add_context_length(shape["context"])
    w.add_embedding_length(shape["hidden"])
    w.add_block_count(shape["layers"])
    w.add_feed_forward_length(shape["intermediate"])
    w.add_head_count(shape["heads"])
    w.add_head_count_kv(shape["kv_heads"])
    w.add_rope_freq_base(shape["rope_theta"])
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(QUANTS[quant])
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(head_dim)
    w.add_quantization_version(2)
    for key, value in tok.items():
        w.add_key_value(key, value, *_typed(value))
    plan = tensor_plan(shape, vocab, quant)
    # the header lists every tensor before any data: declare them all, then stream them in the same order
    for name, dims, qtype in plan:
        if qtype == Q.F32:
            w.add_tensor_info(name, dims, np.dtype(np.float32), int(np.prod(dims)) * 4)
        else:
            byte_shape = quant_shape_to_byte_shape(dims, qtype)
            w.add_tensor_info(name, byte_shape, np.dtype(np.uint8), int(np.prod(byte_shape)), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for index, (name, dims, qtype) in enumerate(plan):
        w.write_tensor_data(tensor_data(index, name, dims, qtype, shape, seed, std))
    w.close()
    os.replace(partial, path)


def cached_path(shape: dict = TINYLLAMA, quant: str = "Q4_1", seed: int = SEED, std: float = STD) -> str:
    """Where the file for these parameters lives in the bench cache (the name is keyed by all of them)."""
    if quant not in QUANTS:
        raise SystemExit(f"quant {quant!r}: use one of {', '.join(QUANTS)} (gguf cannot write K-quants)")
    key = json.dumps({"shape": shape, "quant": quant, "seed": seed, "std": std, "v": VERSION}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    return os.path.join(cache_dir(), "models", f"llama-1b-random-{quant.lower()}-{digest}.gguf")


def ensure(quant: str = "Q4_1", shape: dict = TINYLLAMA, seed: int = SEED, std: float = STD) -> str:
    """The cached file's path, written first if it is not there yet."""
    path = cached_path(shape, quant, seed, std)
    if not os.path.isfile(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        print(f"writing {path} (random weights, once) ...", file=sys.stderr, flush=True)
        write(path, shape, quant, seed, std)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quant", default="Q4_1", choices=list(QUANTS), help="Linear weights' type")
    ap.add_argument("--out", help="write here instead of the bench cache (always rewritten)")
    args = ap.parse_args()
    if args.out:
        write(args.out, quant=args.quant)
        print(args.out)
    else:
        print(ensure(args.quant))


if __name__ == "__main__":
    main()
