"""Quantized linear methods: dynamic int8 on CPU (dynamic_int8.py, with the int8-rows LM head of
int8_head.py) and bitsandbytes on CUDA (bnb.py). Which one a layer uses is decided once per engine
(medvllm/backends/select.py) and handed to the layer at construction; each method packs whatever
weight the layer holds, so a tensor-parallel shard quantizes the same way."""

from __future__ import annotations

from torch import nn

from medvllm.layers.linear import LinearBase

# What this engine implements (hardware.detect() reads this; Config refuses anything else).
METHODS = ("dynamic", "gguf", "bnb-8bit", "bnb-nf4")
KEEP_FLOAT = ("lm_head",)


def quantizable_layers(model: nn.Module) -> dict[str, LinearBase]:
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, LinearBase) and name.rsplit(".", 1)[-1] not in KEEP_FLOAT
    }


def describe(model: nn.Module, method_name: str | None) -> dict | None:
    """What quantization really runs, for runtime_info: method, kernel, how many layers use it, and
    whether the token embedding is held as int8 rows (the head's own form is runtime_info's lm_head)."""
    if method_name is None:
        return None
    layers = quantizable_layers(model).values()
    quantized = [layer for layer in layers if layer.method.name == method_name]
    kernel = getattr(quantized[0].method, "kernel", "bitsandbytes") if quantized else None
    head_float = model.lm_head.method.name in ("float", "float-panels", "float32-logits")
    embedding = model.model.embed_tokens
    described = {
        "method": method_name,
        "kernel": kernel,
        "layers": len(quantized),
        "float_layers": len(layers) - len(quantized) + int(head_float),
        "embedding": "int8-rows" if embedding.int8_rows is not None else embedding.form,
    }
    if method_name == "gguf":  # the file's types as they run (float32 segments for types without a kernel)
        from medvllm.quantization.gguf import describe_activations, describe_types

        described["types"] = describe_types([*layers, model.lm_head])
        described["activations"] = describe_activations([*layers, model.lm_head])
    return described
