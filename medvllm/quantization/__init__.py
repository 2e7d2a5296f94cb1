"""Quantization: a LinearMethod per method, set on each Linear layer once its weights are loaded.

`linear_method(config)` builds the method a Config asks for (None: no quantization). While the model
loads, `quantize_while_loading` quantizes each layer as soon as all of its tensors have been copied in
and frees its float weight, so the whole float model never sits in memory at once; `quantize_model`
then handles whatever the stream did not complete. The LM head is not quantized with the other layers:
under dynamic int8 it becomes weight-only int8 rows shared with the embedding (quantize_embedding).
Each method works on whatever weight the layer holds, so a tensor-parallel shard quantizes the same way.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Iterator

import torch
from torch import nn

from medvllm.engine.memory_pool import release_free_memory
from medvllm.layers.linear import UNQUANTIZED, LinearBase, LinearMethod

# What this engine implements (hardware.detect() reads this; Config refuses anything else).
METHODS = ("dynamic", "bnb-8bit", "bnb-nf4")
KEEP_FLOAT = ("lm_head",)


def linear_method(config) -> LinearMethod | None:
    method = config.quantization_method
    if method is None:
        return None
    if method == "dynamic":
        from medvllm.quantization.dynamic_int8 import DynamicInt8Method
        return DynamicInt8Method()
    from medvllm.quantization.bnb import Bnb8bitMethod, BnbNf4Method
    return {"bnb-8bit": Bnb8bitMethod, "bnb-nf4": BnbNf4Method}[method]()


def quantizable_layers(model: nn.Module) -> dict[str, LinearBase]:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, LinearBase) and name.rsplit(".", 1)[-1] not in KEEP_FLOAT}


def quantize_layer(layer: LinearBase, method: LinearMethod) -> None:
    method.process_weights_after_loading(layer)
    layer.method = method


def quantize_model(model: nn.Module, method: LinearMethod) -> int:
    """Quantize every layer still in float; returns how many layers run `method` in all."""
    layers = quantizable_layers(model)
    for layer in layers.values():
        if layer.method is UNQUANTIZED:
            quantize_layer(layer, method)
    return sum(layer.method is method for layer in layers.values())


def quantize_while_loading(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]],
                           method: LinearMethod) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the checkpoint stream through; quantize each layer once the loader has copied all its parts.

    The loader asks for the next tensor only after copying the previous one, so the code after `yield`
    sees that tensor in place.
    """
    layers = quantizable_layers(model)
    packed = getattr(model, "packed_modules", {})
    seen: dict[str, set] = defaultdict(set)
    # the token embedding (and a tied head) too, once in: its float table is the largest tensor of a
    # small model (113 MB on the default one), and it comes first in a GGUF file
    table_parts = {"model.embed_tokens"} if _head_is_tied(model) else {"model.embed_tokens", "lm_head"}
    with torch.no_grad():
        for name, tensor in weights:
            yield name, tensor
            del tensor  # the loader has copied it: let the float copy go before quantizing
            module_name, part = _route(name, packed)
            if table_parts and module_name in table_parts and part[0] == "weight":
                table_parts.discard(module_name)
                if not table_parts:
                    quantize_embedding(model, method)
            layer = layers.get(module_name)
            if layer is None:
                continue
            seen[module_name].add(part)
            if _complete(layer, seen[module_name]):
                quantize_layer(layer, method)
                del layers[module_name]
                # its float parts sit in the heap between int8 tensors that stay: without handing them
                # back, the load climbed ~150 MB above what it keeps (default model, edge_cpu_int8); the
                # 120 trims cost ~0.1 s in all
                release_free_memory()


def _route(name: str, packed: dict) -> tuple[str, tuple[str, int | None]]:
    """HF tensor name -> (our module name, (param, shard)) as models/weights.py folds it."""
    for hf, (ours, shard) in packed.items():
        if f".{hf}." in name:
            name = name.replace(f".{hf}.", f".{ours}.")
            break
    else:
        shard = None
    module_name, _, param = name.rpartition(".")
    return module_name, (param, shard)


def _complete(layer: LinearBase, parts: set) -> bool:
    shards = range(len(getattr(layer, "output_sizes", [0])))

    def has(param: str) -> bool:
        return (param, None) in parts or all((param, s) in parts for s in shards)

    return has("weight") and (layer.bias is None or has("bias"))


def quantize_embedding(model: nn.Module, method: LinearMethod | None) -> bool:
    """Under dynamic int8, hold the token embedding as int8 rows too, and, where the weight-only kernel
    builds, the LM head as well: a tied head then shares the embedding's int8 table (int8_head.py).
    A float head tied to the embedding keeps the float table. The quality gate's numbers in
    docs/QUALITY.md include all of it. Returns whether the embedding is int8."""
    if method is None or not getattr(method, "quantizes_embedding", False):
        return False
    embedding, head = model.model.embed_tokens, model.lm_head
    if embedding.int8_rows is not None:  # done while loading
        return True
    tied = _head_is_tied(model)
    kernel = getattr(method, "rows_kernel", None)
    if kernel is not None:
        from medvllm.quantization.int8_head import Int8RowsHead
        quantize_layer(head, Int8RowsHead(kernel))
        if tied:  # one table for both
            embedding.int8_rows, embedding.row_scale = head.int8_rows, head.int8_scale
            embedding.weight.data = torch.empty(0, dtype=embedding.weight.dtype)
            return True
    elif tied:
        return False
    embedding.quantize_rows_int8()
    return True


def _head_is_tied(model: nn.Module) -> bool:
    head, embedding = getattr(model, "lm_head", None), getattr(getattr(model, "model", None), "embed_tokens", None)
    return embedding is not None and getattr(head, "weight", None) is embedding.weight


def describe(model: nn.Module, method: LinearMethod | None, embedding_int8: bool = False) -> dict | None:
    """What quantization really runs, for runtime_info: method, kernel, how many layers use it, and
    whether the token embedding is held as int8 rows (the head's own form is runtime_info's lm_head)."""
    if method is None:
        return None
    layers = quantizable_layers(model).values()
    from medvllm.quantization.int8_head import Int8RowsHead
    head_float = not isinstance(model.lm_head.method, Int8RowsHead)
    return {"method": method.name, "kernel": getattr(method, "kernel", "bitsandbytes"),
            "layers": sum(layer.method is method for layer in layers),
            "float_layers": sum(layer.method is not method for layer in layers) + int(head_float),
            "embedding": "int8-rows" if embedding_int8 else "float"}
