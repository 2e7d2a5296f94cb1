"""Steps of a float32 Llama-family model on CPU, one native call per decoder layer.

native/decode_layer.c runs a whole layer (norms, the four Linears, rotary, the KV write, paged
attention, SiLU) with the kernels the PyTorch path calls one by one, without ~15 dispatches and Python
calls a layer. Its Linears are the native int8 kernel (dynamic int8) or float32 on packed panels
(cpu_panel_linear.py). Decode steps always take it; prompt steps too while no sequence's context
exceeds MAX_PROMPT_CONTEXT (cpu_attention.py: each prompt token attends over the paged cache on its
own). Models or settings it does not cover (tensor parallel, q/k norms, a cache dtype the kernel
cannot read, another kind of Linear) keep the PyTorch path; runtime_info["decode_layer"] says which runs.
"""
from __future__ import annotations

import ctypes

import torch

from medvllm.layers.cpu_attention import CACHE_DTYPES, MAX_PROMPT_CONTEXT, CpuPagedBackend
from medvllm.backends.cpu.native.build import NativeUnavailable, load

_P, _I, _F = ctypes.c_void_p, ctypes.c_int64, ctypes.c_float
_MAX_HEAD_DIM = 512  # decode_layer.c's rotary scratch


class _Weight(ctypes.Structure):
    _fields_ = [("panels", _P), ("scale", _P), ("bias", _P), ("n_out", _I), ("k_padded", _I), ("f32_panels", _P),
                ("col_sums", _P)]


class _Layer(ctypes.Structure):
    _fields_ = [("qkv", _Weight), ("o", _Weight), ("gate_up", _Weight), ("down", _Weight),
                ("input_norm", _P), ("post_norm", _P), ("k_cache", _P), ("v_cache", _P),
                ("hidden", _I), ("heads", _I), ("kv_heads", _I), ("head_dim", _I), ("intermediate", _I),
                ("block_size", _I), ("window", _I), ("cache_dtype", _I), ("eps", _F), ("scale", _F)]


class _Step(ctypes.Structure):
    _fields_ = [("positions", _P), ("slots", _P), ("block_tables", _P), ("token_rows", _P), ("cos", _P),
                ("sin", _P), ("tokens", _I), ("max_blocks", _I), ("threads", ctypes.c_int)]


def _is_float32_panels(layer) -> bool:
    return hasattr(layer, "f32_panels") and (layer.bias is None or layer.bias.dtype == torch.float32)


def _weight(layer) -> _Weight:
    bias = None if layer.bias is None else layer.bias.data_ptr()
    if hasattr(layer, "int8_panels"):
        return _Weight(layer.int8_panels.data_ptr(), layer.int8_scale.data_ptr(), bias,
                       layer.int8_scale.shape[0], layer.int8_panels.shape[1] * 4, None,
                       layer.int8_col_sums.data_ptr())
    return _Weight(None, None, bias, layer.out_features, layer.in_features, layer.f32_panels.data_ptr(), None)


def _why_not(model) -> str | None:
    """Why the fused layer cannot run this model, or None when it can."""
    layers = model.model.layers
    first = layers[0]
    if first.self_attn.qk_norm:
        return "q/k norms"
    for layer in layers:
        attn = layer.self_attn
        linears = (attn.qkv_proj, attn.o_proj, layer.mlp.gate_up_proj, layer.mlp.down_proj)
        if any(lin.tp.size != 1 or not (hasattr(lin, "int8_panels") or _is_float32_panels(lin)) for lin in linears):
            return "a Linear layer on neither the native int8 kernel nor float32 panels"
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
        # a prompt step's buffer (~40 MB at 2,048 tokens on the default model) is past glibc's mmap
        # threshold: allocated per step, it was mapped in and zeroed again every step (36,000 page faults
        # and ~7% of a 64-prompt prefill here)
        self.work = torch.empty(0)

    def handles(self, meta) -> bool:
        """Decode steps, and prompt steps whose contexts are all short."""
        return meta.is_decode or int(meta.context_lens.max()) <= MAX_PROMPT_CONTEXT

    def __call__(self, hidden: torch.Tensor, positions: torch.Tensor, meta) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = hidden.contiguous()
        tokens = hidden.shape[0]
        residual = torch.empty_like(hidden)
        if self.work.numel() < tokens * self.work_floats:  # one buffer for every layer, kept for the next step
            self.work = torch.empty(tokens * self.work_floats)
        work = self.work
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
