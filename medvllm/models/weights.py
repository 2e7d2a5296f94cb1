"""Routes checkpoint tensors (Hugging Face names) to the layers that keep them.

q/k/v and gate/up fold into merged projections (a shard index says which part). A layer that is split
over tensor-parallel ranks has `full_shape(name, shard)` and `load_weight(name, tensor, shard)`: it is
handed the full checkpoint tensor and keeps its rank's slice; other parameters are copied whole.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from medvllm.errors import ModelLoadError


def load_weights(model: nn.Module, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
    params = dict(model.named_parameters())
    packed = getattr(model, "packed_modules", {})
    filled: set[str] = set()
    for name, tensor in weights:
        if "rotary_emb" in name:
            continue  # recomputed from the config
        if name == "lm_head.weight" and getattr(model, "tie_word_embeddings", False):
            continue
        target, shard = checkpoint_target(name, packed)
        module_name, _, attr = target.rpartition(".")
        module = _submodule(model, module_name)
        expected = _full_shape(module, attr, shard, params.get(target))
        if expected is None:
            raise ModelLoadError(
                f"checkpoint tensor {name!r} has no place in {type(model).__name__}: "
                "the checkpoint does not match its config.json architecture"
            )
        if tuple(tensor.shape) != expected:
            raise ModelLoadError(
                f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                f"expected {expected}: the checkpoint does not match its config"
            )
        with torch.no_grad():
            if hasattr(module, "load_weight"):
                module.load_weight(attr, tensor, shard)
            else:
                params[target].data.copy_(tensor)
        filled.add(target if shard is None else f"{target}#{shard}")
        del tensor  # copied: not held while the source makes the next one (or quantizes this layer)
    _check_complete(model, params, packed, filled)


def checkpoint_target(name: str, packed: dict) -> tuple[str, int | None]:
    for hf, (ours, shard) in packed.items():
        if f".{hf}." in name:
            return name.replace(f".{hf}.", f".{ours}."), shard
    return name, None


def _submodule(model: nn.Module, name: str) -> nn.Module | None:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def _full_shape(module, attr: str, shard: int | None, param) -> tuple[int, ...] | None:
    """The shape the checkpoint tensor must have, or None when the model has no place for it."""
    if module is not None and hasattr(module, "full_shape"):
        return module.full_shape(attr, shard)
    return None if param is None or shard is not None else tuple(param.shape)


def _check_complete(model, params, packed, filled) -> None:
    shards_of = {}
    for ours, shard in packed.values():
        shards_of.setdefault(ours, set()).add(shard)
    missing = []
    for name in params:
        if name == "lm_head.weight" and getattr(model, "tie_word_embeddings", False):
            continue
        merged = next((m for m in shards_of if f".{m}." in name), None)
        if merged is None:
            if name not in filled:
                missing.append(name)
        elif any(f"{name}#{s}" not in filled for s in shards_of[merged]):
            missing.append(name)
    if missing:
        raise ModelLoadError(
            f"checkpoint lacks {len(missing)} tensors (e.g. {missing[0]!r}): "
            "the file is incomplete or is not the architecture its config names"
        )
