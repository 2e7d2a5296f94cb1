"""Steps of a dynamic-int8 Llama-family model on CPU, one native call per decoder layer.

native/decode_layer.c runs a whole layer (norms, the four int8 Linears, rotary, the KV write, paged
attention, SiLU) with the same kernels the PyTorch path calls one by one. Decode steps always take it;
prompt steps too while no sequence's context exceeds MAX_PROMPT_CONTEXT (each prompt token attends
over the paged cache on its own; past that, SDPA's blocked kernel over the gathered context is
faster: one prompt of 128 / 512 / 1024 / 2000 tokens took 29 / 171 / 550 / 2371 ms here against
48 / 184 / 485 / 1561 ms for the PyTorch path). Models or settings it does not cover (tensor parallel, q/k norms, a cache dtype the kernel
cannot read, a Linear not on the native int8 kernel) keep the PyTorch path; runtime_info["decode_layer"]
says which runs.
"""
from __future__ import annotations

import ctypes

import torch

from medvllm.layers.cpu_attention import CACHE_DTYPES, CpuPagedBackend
from medvllm.layers.native.build import NativeUnavailable, load

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_MAX_HEAD_DIM = 512  # decode_layer.c's rotary scratch
MAX_PROMPT_CONTEXT = 768  # longest context a prompt step may have to run here (see the module doc)


class _Int8Weight(ctypes.Structure):
    _fields_ = [("panels", _P), ("scale", _P), ("bias", _P), ("n_out", _I), ("k_padded", _I)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Int8Weight), ("o", _Int8Weight), ("gate_up", _Int8Weight), ("down", _Int8Weight),
                ("input_norm", _P), ("post_norm", _P), ("k_cache", _P), ("v_cache", _P),
                ("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("intermediate", _I),
                ("block_size", _I), ("window", _I), ("cache_dtype", _I), ("eps", _F), ("scale", _F)]


class _Step(ctypes.Structure):
    _fields_ = [("positions", _P), ("slots", _P), ("block_tables", _P), ("token_rows", _P), ("cos", _P),
                ("sin", _P), ("tokens", _I), ("max_blocks", _I), ("threads", ctypes.c_int)]


def _weight(layer) -> _Int8Weight:
    bias = None if layer.bias is None else layer.bias.data_ptr()
    return _Int8Weight(layer.int8_panels.data_ptr(), layer.int8_scale.data_ptr(), bias,
                       layer.int8_scale.shape[0], layer.int8_panels.shape[1] * 4)


def _why_not(model) -> str | None:
    """Why the fused layer cannot run this model, or None when it can."""
    layers = model.model.layers
    first = layers[0]
    if first.self_attn.qk_norm:
        return "q/k norms"
    for layer in layers:
        attn = layer.self_attn
        linears = (attn.qkv_proj, attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
        if any(lin.tp.size != 1 or not hasattr(lin, "int8_panels") for lin in linears):
            return "a Linear layer not on the native int8 kernel"
        cache = attn.attn.k_cache
        if cache is None or cache.dtype not in CACHE_DTYPES or not isinstance(attn.attn.backend, CpuPagedBackend):
            return "the attention backend or KV cache dtype"
        if attn.head_dim > _MAX_HEAD_DIM:
            return "head_dim"
    return None


class FusedDecode:
    """Runs every decoder layer of a step; returns (hidden, residual) before the final norm."""

    def __init__(self, model, kernel, work_floats):
        self.kernel = kernel
        self.rotary = model.model.layers[0].self_attn.rotary
        self.layers = []
        for layer in model.model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            cache = attn.attn.k_cache
            self.layers.append(_Layer(
                _weight(attn.qkv_proj), _weight(attn.o_proj), _weight(mlp.gate_up_proj), _weight(mlp.down_proj),
                layer.input_layernorm.weight.data_ptr(), layer.post_attention_layernorm.weight.data_ptr(),
                cache.data_ptr(), attn.attn.v_cache.data_ptr(), layer.input_layernorm.weight.shape[0],
                attn.num_heads, attn.num_kv_heads, attn.head_dim, mlp.intermediate, cache.shape[1],
                attn.attn.sliding_window or 0, CACHE_DTYPES[cache.dtype], layer.input_layernorm.eps,
                attn.attn.scale))
        self.work_floats = work_floats(ctypes.byref(self.layers[0]))  # per token, the same for every layer

    def handles(self, meta) -> bool:
        """Decode steps, and prompt steps whose contexts are all short (see the module doc)."""
        return meta.is_decode or int(meta.context_lens.max()) <= MAX_PROMPT_CONTEXT

    def __call__(self, hidden: torch.Tensor, positions: torch.Tensor, meta) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden.contiguous()
        tokens = hidden.shape[0]
        residual = torch.empty_like(hidden)
        work = torch.empty(tokens * self.work_floats)  # one buffer for every layer of the step
        positions = positions.to(torch.int64).contiguous()
        slots = meta.slot_mapping.to(torch.int64).contiguous()
        tables = meta.block_tables.to(torch.int64).contiguous()
        if meta.is_decode:  # one token per sequence, in block-table order
            rows = torch.arange(tokens, dtype=torch.int64)
        else:  # each prompt token's sequence: its row of the padded [B, max_q] layout
            rows = torch.div(meta.unpad_index, meta.pad_index.shape[1], rounding_mode="floor").to(torch.int64)
        step = _Step(positions.data_ptr(), slots.data_ptr(), tables.data_ptr(), rows.data_ptr(),
                     self.rotary.cos.data_ptr(), self.rotary.sin.data_ptr(), tokens, tables.shape[1],
                     torch.get_num_threads())
        step_ref, h, r, w = ctypes.byref(step), hidden.data_ptr(), residual.data_ptr(), work.data_ptr()
        for i, layer in enumerate(self.layers):
            if self.kernel(ctypes.byref(layer), step_ref, h, r, int(i == 0), w) != 0:
                raise MemoryError("the native decode layer could not allocate its work memory")
        return hidden, residual


def use_fused_decode(model, device: torch.device, dtype: torch.dtype) -> str:
    """Give the model its fused decode path where it can run; returns "native" or "torch"."""
    model.model.fused_decode = None
    if device.type != "cpu" or dtype != torch.float32 or _why_not(model) is not None:
        return "torch"
    try:
        library = load("decode_layer")
    except NativeUnavailable:
        return "torch"
    kernel, work_floats = library.decode_layer, library.decode_layer_work
    kernel.restype, work_floats.restype = ctypes.c_int, ctypes.c_int64
    kernel.argtypes = [_P, _P, _P, _P, ctypes.c_int, _P]
    work_floats.argtypes = [_P]
    model.model.fused_decode = FusedDecode(model, kernel, work_floats)
    return "native"
