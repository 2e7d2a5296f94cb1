"""Steps of a float32 Llama-family or Gemma 3 model on CPU, one native call per decoder layer.

native/decode_layer.c runs a whole layer (norms, the four Linears, rotary, the KV write, paged
attention, SiLU) with the kernels the PyTorch path calls one by one, without a dozen dispatches and
Python calls a layer. Its Linears are the native int8 kernel (dynamic int8) or float32 on packed panels
(panel_linear.py). Decode steps always take it; prompt steps too while no sequence's context
exceeds MAX_PROMPT_CONTEXT, or no run of queries does (attention.py: each prompt token attends over
the paged cache on its own). Which models and settings it covers is decided with the other backends
(medvllm/backends/select.py); runtime_info["decode_layer"] says whether it runs.
"""

from __future__ import annotations

import logging

import torch

from medvllm.backends.cpu.attention import attends_in_place
from medvllm.backends.cpu.native import binding

log = logging.getLogger(__name__)

MAX_HEAD_DIM = 512  # decode_layer.c's rotary scratch


class NotFusable(ValueError):
    """A layer holds what the fused layer cannot run (the message says what)."""


def _weight(layer) -> binding.Weight:
    """A Linear's packed form as the C struct: int8 panels (dynamic int8), a GGUF file's blocks, or float32
    panels."""
    packed = layer.packed
    if hasattr(packed, "segments"):  # gguf
        if any(s.blocks is None for s in packed.segments) or len(packed.segments) > binding.GGUF_SEGMENTS:
            raise NotFusable(f"a projection holds GGUF types {packed.types} the fused layer does not run")
        segments = [(s.blocks, int(s.qtype)) for s in packed.segments]
        return binding.decode_weight_gguf(segments, layer.method.parts, layer.bias, layer.in_features)
    if hasattr(packed, "panels"):
        return binding.decode_weight_int8(
            packed.panels, packed.scale, packed.col_sums, packed.group, packed.n_out, layer.bias
        )
    return binding.decode_weight_f32(packed, layer.bias, layer.out_features, layer.in_features)


def _gemma(layer, windowed: bool) -> dict:
    """What Gemma's layer adds (decode_layer.c): its norms' 1 + w, its rotary tables, its KV pool."""
    attn = layer.self_attn
    if not attn.qk_norm or attn.attn.softcap is not None:
        raise NotFusable("a Gemma layer without q/k norms or with soft-capped scores (Gemma 2)")
    return dict(
        q_norm=attn.q_norm.kernel_weight(),
        k_norm=attn.k_norm.kernel_weight(),
        pre_ff_norm=layer.pre_feedforward_layernorm.kernel_weight(),
        post_ff_norm=layer.post_feedforward_layernorm.kernel_weight(),
        cos=attn.rotary.cos,
        sin=attn.rotary.sin,
        window_pool=windowed and attn.attn.sliding_window is not None,
    )


class FusedDecode:
    """Runs every decoder layer of a step; returns (hidden, residual) before the final norm (Gemma's
    layers keep no separate residual: hidden is the residual stream)."""

    def __init__(self, model, kernel, work_floats, gemma: bool = False, windowed: bool = False):
        """`model`: the decoder stack (LlamaModel, or GemmaModel with `gemma`), its KV cache bound and its
        weights packed; `windowed`: its sliding-window layers have a KV pool of their own."""
        self.kernel = kernel
        self.rotary = model.layers[0].self_attn.rotary
        self.windowed = windowed
        self.layers = []
        for layer in model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            norms = (layer.input_layernorm, layer.post_attention_layernorm)
            self.layers.append(
                binding.decode_layer_params(
                    _weight(attn.qkv_proj),
                    _weight(attn.o_proj),
                    _weight(mlp.gate_up_proj),
                    _weight(mlp.down_proj),
                    *(n.kernel_weight() for n in norms),
                    attn.attn.k_cache,
                    attn.attn.v_cache,
                    attn.num_heads,
                    attn.num_kv_heads,
                    attn.head_dim,
                    mlp.intermediate,
                    attn.attn.sliding_window or 0,
                    layer.input_layernorm.eps,
                    attn.attn.scale,
                    _gemma(layer, windowed) if gemma else None,
                )
            )
        self.work_floats = work_floats(self.layers[0])  # per token, the same for every layer
        # a prompt step's buffer is past glibc's mmap threshold: allocated per step, it would be mapped in
        # and zeroed again every step; kept, it is reused
        self.work = torch.empty(0)

    def handles(self, meta) -> bool:
        """The steps whose attention runs on the paged kernel (attention.attends_in_place)."""
        return attends_in_place(meta)

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
        window = None
        if self.windowed:
            window = (
                meta.window.slot_mapping.to(torch.int64).contiguous(),
                meta.window.block_tables.to(torch.int64).contiguous(),
            )
        step = binding.decode_step(
            positions, slots, tables, rows, self.rotary.cos, self.rotary.sin, torch.get_num_threads(), window
        )
        for i, layer in enumerate(self.layers):
            if self.kernel(layer, step, hidden, residual, i == 0, work) != 0:
                raise MemoryError("the native decode layer could not allocate its work memory")
        return hidden, residual


def fused_decode_layers():
    """A builder for LayerKit.fused_layers: decoder stack -> FusedDecode, or None when a layer holds what
    the fused layer does not run (PyTorch's layer path then calls the same kernels one by one). Raises
    NativeUnavailable with the reason."""
    binding.library()

    def build(decoder, gemma: bool = False, windowed: bool = False):
        try:
            return FusedDecode(decoder, binding.decode_layer, binding.decode_layer_work, gemma, windowed)
        except NotFusable as e:
            log.warning("fused decoder layer off: %s; the layers run one kernel call at a time", e)
            return None

    return build
