"""Rotary position embeddings: default, linear and llama3 frequency scaling."""

from __future__ import annotations

import math

import torch
from torch import nn

from medvllm.errors import ModelLoadError

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def rope_parameters(hf_config) -> dict:
    """Rope settings from a transformers config: `rope_parameters` (v5) or `rope_theta`/`rope_scaling` (v4)."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None)
    if scaling and not params.get("rope_type"):
        params.update(scaling)
    params.setdefault("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    params["rope_type"] = params.get("rope_type") or params.get("type") or "default"
    return params


def inverse_frequencies(head_dim: int, params: dict) -> torch.Tensor:
    base = float(params["rope_theta"])
    steps = torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float()
    inv_freq = 1.0 / (base ** (steps / head_dim))
    rope_type = params["rope_type"]
    if rope_type == "default":
        return inv_freq
    if rope_type == "linear":
        return inv_freq / float(params["factor"])
    if rope_type == "llama3":
        return _llama3_scale(inv_freq, params)
    raise ModelLoadError(
        f"rope_type={rope_type!r} is not supported: use a model with one of {', '.join(SUPPORTED_ROPE_TYPES)}"
    )


def _llama3_scale(inv_freq: torch.Tensor, p: dict) -> torch.Tensor:
    factor, low, high = float(p["factor"]), float(p["low_freq_factor"]), float(p["high_freq_factor"])
    old_len = float(p["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(is_medium, smoothed, scaled)


class RotaryEmbedding(nn.Module):
    """cos/sin for every position, computed once and shared by all layers (see get_rotary).

    The tables are plain attributes, not buffers: they stay float32 when the model is cast, and
    building the model on the meta device leaves them intact. `cos`/`sin` stay on the CPU for good: one
    object serves every model of this shape in the process (a CPU and a CUDA engine in `quality compare`),
    and the CPU's C kernels read them by pointer. Another device gets its own copy (`tables`).
    """

    def __init__(self, head_dim: int, max_positions: int, params: dict):
        super().__init__()
        inv_freq = inverse_frequencies(head_dim, params)
        positions = torch.arange(max_positions, dtype=torch.float32, device="cpu")
        freqs = torch.outer(positions, inv_freq.to("cpu"))
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos, self.sin = emb.cos(), emb.sin()
        self._copies = {self.cos.device: (self.cos, self.sin)}  # device -> its (cos, sin)
        self._positions, self._rows = None, None

    def tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin on `device`, copied there once; the CPU tables are never moved."""
        found = self._copies.get(torch.device(device))
        if found is None:
            cos, sin = self.cos.to(device), self.sin.to(device)
            found = self._copies[cos.device] = self._copies[torch.device(device)] = (cos, sin)
        return found

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """q: [T, Hq, D], k: [T, Hk, D], positions: [T]."""
        cos, sin = self._tables(positions)
        return _rotate(q, cos, sin), _rotate(k, cos, sin)

    def rotate(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """x: [T, heads, D] (q and k side by side: one pass for both)."""
        return _rotate(x, *self._tables(positions))

    def _tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # every layer of a step passes the same positions tensor: look the rows up once per step
        if positions is not self._positions:
            cos, sin = self.tables(positions.device)
            self._rows = (cos.index_select(0, positions).unsqueeze(1), sin.index_select(0, positions).unsqueeze(1))
            self._positions = positions
        return self._rows


_ROTARY_CACHE: dict = {}


def get_rotary(head_dim: int, max_positions: int, params: dict) -> RotaryEmbedding:
    key = (head_dim, max_positions, tuple(sorted((k, str(v)) for k, v in params.items())))
    if key not in _ROTARY_CACHE:
        _ROTARY_CACHE.clear()  # one model per process at a time; don't pin old tables
        _ROTARY_CACHE[key] = RotaryEmbedding(head_dim, max_positions, params)
    return _ROTARY_CACHE[key]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    dtype = x.dtype
    x = x.float()
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return (x * cos + rotated * sin).to(dtype)
