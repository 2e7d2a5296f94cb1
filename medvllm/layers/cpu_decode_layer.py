"""Steps of a float32 Llama-family model on CPU, one native call per decoder layer.

native/decode_layer.c runs a whole layer (norms, the four Linears, rotary, the KV write, paged
attention, SiLU) with the kernels the PyTorch path calls one by one, without ~15 dispatches and Python
calls a layer. Its Linears are the native int8 kernel (dynamic int8) or float32 on packed panels
(cpu_panel_linear.py). Decode steps always take it; prompt steps too while no sequence's context
exceeds MAX_PROMPT_CONTEXT (cpu_attention.py: each prompt token attends over the paged cache on its
own). Models or settings it does not cover (tensor parallel, q/k norms, a cache dtype the kernel
cannot read, another kind of Linear) keep the PyTorch path; runtime_info["decode_layer"] says which runs.

The work buffer is kept from step to step: a prompt step's (~40 MB at 2,048 tokens on the default
model) is past glibc's mmap threshold, so allocated per step it was mapped in and zeroed again every
step (36,000 page faults and ~7% of a 64-prompt prefill).
"""
from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.build import NativeUnavailable
from medvllm.layers.cpu_attention import CACHE_DTYPES, MAX_PROMPT_CONTEXT, CpuPagedBackend

_MAX_HEAD_DIM = 512  # decode_layer.c's rotary scratch


def _is_float32_panels(layer) -> bool:
    return hasattr(layer, "f32_panels") and (layer.bias is None or layer.bias.dtype == torch.float32)


def _weight(layer) -> binding.Weight:
    if hasattr(layer, "int8_panels"):
        return binding.decode_weight_int8(layer.int8_panels, layer.int8_scale, layer.bias, layer.int8_col_sums)
    return binding.decode_weight_f32(layer.f32_panels, layer.bias, layer.out_features, layer.in_features)


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
            self.layers.append(binding.decode_layer_params(
                _weight(attn.qkv_proj), _weight(attn.o_proj), _weight(mlp.gate_up_proj), _weight(mlp.down_proj),
                layer.input_layernorm.weight, layer.post_attention_layernorm.weight, cache, attn.attn.v_cache,
                attn.num_heads, attn.num_kv_heads, attn.head_dim, mlp.intermediate, attn.attn.sliding_window or 0,
                layer.input_layernorm.eps, attn.attn.scale))
        self.work_floats = work_floats(self.layers[0])  # per token, the same for every layer
        # a prompt step's buffer is past glibc's mmap threshold: allocated per step, it would be mapped
        # in and zeroed again every step
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
        step = binding.decode_step(positions, slots, tables, rows, self.rotary.cos, self.rotary.sin,
                                   torch.get_num_threads())
        for i, layer in enumerate(self.layers):
            if self.kernel(layer, step, hidden, residual, i == 0, work) != 0:
                raise MemoryError("the native decode layer could not allocate its work memory")
        return hidden, residual


def use_fused_decode(model, device: torch.device, dtype: torch.dtype) -> str:
    """Give the model its fused decode path where it can run; returns "native" or "torch"."""
    model.model.fused_decode = None
    if device.type != "cpu" or dtype != torch.float32 or _why_not(model) is not None:
        return "torch"
    try:
        binding.library()
    except NativeUnavailable:
        return "torch"
    model.model.fused_decode = FusedDecode(model, binding.decode_layer, binding.decode_layer_work)
    return "native"
