"""Rank 0 -> workers messages on the control group: ("init", config, model, max_model_len),
("step", StepInputs) and ("stop",). Step tensors travel on the CPU; each rank moves them to its device."""

from __future__ import annotations

import dataclasses

import torch
import torch.distributed as dist

from medvllm.distributed.parallel import TensorParallel


def send(tp: TensorParallel, message: tuple) -> None:
    dist.broadcast_object_list([message], src=0, group=tp.control)


def receive(tp: TensorParallel) -> tuple:
    box = [None]
    dist.broadcast_object_list(box, src=0, group=tp.control)
    return box[0]


def to_device(obj, device: torch.device):
    """A copy of a step-inputs dataclass (nested) with every tensor on `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=True)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: to_device(getattr(obj, f.name), device) for f in dataclasses.fields(obj) if f.init}
        )
    return obj
