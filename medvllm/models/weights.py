"""Copies checkpoint tensors (Hugging Face names) into a model, folding q/k/v and gate/up together."""
from __future__ import annotations

from typing import Iterable

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
        target, shard = _target(name, packed)
        param = params.get(target)
        if param is None:
            raise ModelLoadError(f"checkpoint tensor {name!r} has no place in {type(model).__name__}: "
                                 "the checkpoint does not match its config.json architecture")
        with torch.no_grad():
            dest = param.data if shard is None else _shard_view(param.data, shard, target, model)
            if dest.shape != tensor.shape:
                raise ModelLoadError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, "
                                     f"expected {tuple(dest.shape)}: the checkpoint does not match its config")
            dest.copy_(tensor)
        filled.add(target if shard is None else f"{target}#{shard}")
    _check_complete(model, params, packed, filled)


def _target(name: str, packed: dict) -> tuple[str, int | None]:
    for hf, (ours, shard) in packed.items():
        if f".{hf}." in name:
            return name.replace(f".{hf}.", f".{ours}."), shard
    return name, None


def _shard_view(data: torch.Tensor, shard: int, target: str, model: nn.Module) -> torch.Tensor:
    """The rows of a merged projection that hold shard `shard` (q/k/v or gate/up)."""
    start, size = model.get_submodule(target.rsplit(".", 1)[0]).shard_rows(shard)
    return data.narrow(0, start, size)


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
        raise ModelLoadError(f"checkpoint lacks {len(missing)} tensors (e.g. {missing[0]!r}): "
                             "the file is incomplete or is not the architecture its config names")
