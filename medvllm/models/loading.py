"""Building a model and filling it from a checkpoint stream.

The model is built on the meta device with its LayerKit (how each layer computes), then given empty
storage in its dtype on its device, so the weights never exist twice. As the stream fills a layer, the
layer processes its weights at once (packs or quantizes them, freeing the float copy a packed form
replaces), so a float model never sits in memory whole when the kit stores something else.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import nn

from medvllm.layers.kit import REFERENCE, LayerKit
from medvllm.layers.linear import LinearBase
from medvllm.models.registry import model_class
from medvllm.models.weights import checkpoint_target, load_weights

TABLE = "model.embed_tokens"
HEAD = "lm_head"


def build_model(
    source,
    max_model_len: int,
    dtype: torch.dtype,
    device: torch.device,
    kit: LayerKit = REFERENCE,
    tp=None,
    release: Callable[[], None] | None = None,
    process_while_loading: bool = True,
):
    """`source`: a ModelSource (hf_config, iter_weights()). `release`: hands memory freed by a processed
    layer back to the OS (the CPU heap), called after each such layer.

    Where the decoder's method packs from host memory (`LinearMethod.packs_from_host`: bitsandbytes
    quantizes a weight on its way to the GPU), the model is loaded into host memory and each layer's
    packed form made on `device` as it fills; the rest of the model follows once loaded. The device then
    never holds the float model: its peak is the packed model plus the layers that stay float."""
    cls = model_class(source.hf_config)
    with torch.device("meta"):
        model = cls(source.hf_config, max_model_len, tp=tp, kit=kit)
    staged = kit.linear.packs_from_host and device.type != "cpu"
    load_device = torch.device("cpu") if staged else device
    model = empty_on(model.to(dtype), load_device)  # cast while empty: the weights never exist twice
    model.tie_weights()  # empty_on gives shared parameters storage of their own
    if device.type != "cpu":
        # the tables' copy for this device, made now rather than at the first step; the shared CPU tables stay
        model.model.layers[0].self_attn.rotary.tables(device)
    # the gguf method keeps the file's blocks: the stream hands them over as they are stored
    weights = source.iter_weights(blocks=not kit.linear.holds_float_weight)
    if process_while_loading:
        # staged, the head and the table are processed on the device, once moved there
        weights = _processed_as_filled(model, weights, release, tables=not staged)
    load_weights(model, weights)
    if staged:
        model.to(device)  # what stays float: norms, embedding, head, biases
    process_remaining(model)
    return model.eval()


def empty_on(model: nn.Module, device: torch.device) -> nn.Module:
    """Module.to_empty, without its path through the meta tensors' reference ops: that path imports
    sympy, ~0.4 s of every start-up. Each parameter and buffer gets uninitialised storage on `device`."""
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            fresh = torch.empty(p.shape, dtype=p.dtype, device=device)
            setattr(module, name, nn.Parameter(fresh, requires_grad=p.requires_grad))
        for name, b in list(module.named_buffers(recurse=False)):
            setattr(module, name, torch.empty(b.shape, dtype=b.dtype, device=device))  # keeps persistence
    return model


def linear_layers(model: nn.Module) -> dict[str, LinearBase]:
    """The decoder's Linear layers by name (the LM head is processed with the embedding)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LinearBase) and name != HEAD}


def process_remaining(model: nn.Module) -> None:
    """Process whatever the stream did not complete (every layer, when nothing was processed while loading)."""
    for layer in linear_layers(model).values():
        if not layer.processed:
            layer.process_weights_after_loading()
    if not model.lm_head.processed:
        model.process_embeddings_after_loading()


def _processed_as_filled(
    model: nn.Module,
    weights: Iterable[tuple[str, torch.Tensor]],
    release: Callable[[], None] | None,
    tables: bool = True,
) -> Iterator[tuple[str, torch.Tensor]]:
    """Pass the checkpoint stream through; process each layer once the loader has copied all its parts.

    The loader asks for the next tensor only after copying the previous one, so the code after `yield`
    sees that tensor in place.
    """
    layers = linear_layers(model)
    packed = getattr(model, "packed_modules", {})
    seen: dict[str, set] = defaultdict(set)
    # the token table and the head go together: an int8 tied head shares its rows with the table
    table_parts = ({TABLE} if model.tie_word_embeddings else {TABLE, HEAD}) if tables else set()
    with torch.no_grad():
        for name, tensor in weights:
            yield name, tensor
            del tensor  # the loader has copied it: let the float copy go before processing
            module_name, part = _route(name, packed)
            if module_name in table_parts and part[0] == "weight":
                table_parts.discard(module_name)
                if not table_parts:
                    model.process_embeddings_after_loading()
                    _release(release, model.lm_head)
            layer = layers.get(module_name)
            if layer is None:
                continue
            seen[module_name].add(part)
            if _complete(layer, seen[module_name]):
                layer.process_weights_after_loading()
                del layers[module_name]
                _release(release, layer)


def _release(release: Callable[[], None] | None, layer: LinearBase) -> None:
    # a freed float weight sits in the heap between packed tensors that stay: hand it back now
    if release is not None and layer.method.frees_weight:
        release()


def _route(name: str, packed: dict) -> tuple[str, tuple[str, int | None]]:
    """HF tensor name -> (our module name, (param, shard)) as models/weights.py folds it."""
    target, shard = checkpoint_target(name, packed)
    module_name, _, param = target.rpartition(".")
    return module_name, (param, shard)


def _complete(layer: LinearBase, parts: set) -> bool:
    shards = range(len(getattr(layer, "output_sizes", [0])))

    def has(param: str) -> bool:
        return (param, None) in parts or all((param, s) in parts for s in shards)

    return has("weight") and (layer.bias is None or has("bias"))
