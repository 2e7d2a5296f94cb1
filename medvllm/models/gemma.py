"""The Gemma 2 / Gemma 3 decoder (text models), as transformers defines it.

Against Llama: four norms per block (around attention and around the MLP) with Gemma's (1 + weight)
scaling, a GeGLU MLP (tanh-approximated GELU), embeddings scaled by sqrt(hidden_size) in the model dtype,
the attention scale from query_pre_attn_scalar, sliding-window (local) and global layers interleaved as
`layer_types` says, each kind with its own RoPE. Gemma 2 soft-caps the attention scores and the final
logits; Gemma 3 drops the caps (its configs set them to None) and adds RMSNorm on q and k.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvllm.distributed.parallel import SINGLE, TensorParallel
from medvllm.errors import ModelLoadError
from medvllm.layers.attention import AttentionMetadata, PagedAttention, bind_layer_caches
from medvllm.layers.embedding import VocabParallelEmbedding
from medvllm.layers.kit import REFERENCE, LayerKit
from medvllm.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from medvllm.layers.norm import GemmaRMSNorm
from medvllm.layers.rotary import RotaryEmbedding, get_rotary, rope_parameters
from medvllm.models.llama import ArchOptions, LlamaForCausalLM, attention_projections

SLIDING, FULL = "sliding_attention", "full_attention"


def layer_types(cfg) -> list[str]:
    types = list(getattr(cfg, "layer_types", None) or [])
    if len(types) != cfg.num_hidden_layers or not set(types) <= {SLIDING, FULL}:
        raise ModelLoadError(
            f"layer_types={types} is not one of {SLIDING!r} / {FULL!r} per layer for {cfg.num_hidden_layers} "
            "layers: fix the model's config.json"
        )
    return types


def layer_rope(cfg, layer_type: str) -> dict:
    """Gemma 3 gives each layer kind its RoPE (local base frequency, the global layers' scaling); Gemma 2 one."""
    params = getattr(cfg, "rope_parameters", None) or {}
    if isinstance(params.get(layer_type), dict):
        own = dict(params[layer_type])
        own["rope_type"] = own.get("rope_type") or own.get("type") or "default"
        return own
    return rope_parameters(cfg)


def gemma_options(cfg, qk_norm: bool) -> ArchOptions:
    if getattr(cfg, "use_bidirectional_attention", False):
        raise ModelLoadError(
            "use_bidirectional_attention=True (an embedding model) is not supported: use a causal Gemma checkpoint"
        )
    sliding = SLIDING in layer_types(cfg)
    return ArchOptions(
        qk_norm=qk_norm,
        sliding_window=cfg.sliding_window if sliding else None,
        attn_softcap=getattr(cfg, "attn_logit_softcapping", None),
        llama_decoder=False,
        gemma3_decoder=qk_norm and getattr(cfg, "attn_logit_softcapping", None) is None,
        fp16_overflows=qk_norm,  # Gemma 3 (the one with q/k norms), as transformers and its authors warn
    )


class GemmaAttention(nn.Module):
    """num_heads / num_kv_heads / q_size / kv_size are this rank's (all of them when tp=1)."""

    def __init__(
        self, cfg, opts: ArchOptions, window, rotary: RotaryEmbedding, kit: LayerKit, tp: TensorParallel = SINGLE
    ):
        super().__init__()
        bias = bool(getattr(cfg, "attention_bias", False))
        p = attention_projections(cfg, bias, bias, kit, tp)
        d = self.head_dim = p.head_dim
        self.num_heads, self.num_kv_heads = p.num_heads, p.num_kv_heads
        self.q_size, self.kv_size = p.num_heads * d, p.num_kv_heads * d
        self.qkv_proj, self.o_proj = p.qkv_proj, p.o_proj
        self.qk_norm = opts.qk_norm
        if opts.qk_norm:
            self.q_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, kit.norm)
            self.k_norm = GemmaRMSNorm(d, cfg.rms_norm_eps, kit.norm)
        # shared by the layers of one kind; kept out of the module tree so casts and meta-init leave it alone
        self.__dict__["rotary"] = rotary
        scale = float(cfg.query_pre_attn_scalar) ** -0.5
        self.attn = PagedAttention(
            self.num_heads, self.num_kv_heads, d, scale, window, kit.attention, softcap=opts.attn_softcap
        )

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata):
        q, k, v = self.qkv_proj(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.reshape(-1, self.num_heads, self.head_dim)
        k = k.reshape(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary(positions, q, k)
        return self.o_proj(self.attn(q, k, v.reshape(-1, self.num_kv_heads, self.head_dim), meta))


class GemmaMLP(nn.Module):
    def __init__(self, cfg, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        act = getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", None)
        if act not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ModelLoadError(f"hidden_activation={act!r} is not supported: Gemma models use gelu_pytorch_tanh")
        self.gate_up_proj = MergedColumnParallelLinear(
            cfg.hidden_size, [cfg.intermediate_size] * 2, bias=False, tp=tp, method=kit.linear
        )
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=False, tp=tp, method=kit.linear)
        self.intermediate = self.gate_up_proj.output_sizes[0]  # this rank's share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.gelu(gate, approximate="tanh") * up)


class GemmaDecoderLayer(nn.Module):
    def __init__(self, cfg, opts, window, rotary, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        self.self_attn = GemmaAttention(cfg, opts, window, rotary, kit, tp)
        self.mlp = GemmaMLP(cfg, kit, tp)
        size, eps = cfg.hidden_size, cfg.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(size, eps, kit.norm)
        self.post_attention_layernorm = GemmaRMSNorm(size, eps, kit.norm)
        self.pre_feedforward_layernorm = GemmaRMSNorm(size, eps, kit.norm)
        self.post_feedforward_layernorm = GemmaRMSNorm(size, eps, kit.norm)

    def forward(self, positions, x, meta):
        x = x + self.post_attention_layernorm(self.self_attn(positions, self.input_layernorm(x), meta))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))


class GemmaModel(nn.Module):
    def __init__(self, cfg, opts: ArchOptions, max_positions: int, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp, form=kit.embedding)
        self.embed_scale = cfg.hidden_size**0.5
        types = layer_types(cfg)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        rotaries = {t: get_rotary(head_dim, max_positions, layer_rope(cfg, t)) for t in sorted(set(types))}
        self.layers = nn.ModuleList(
            GemmaDecoderLayer(cfg, opts, cfg.sliding_window if t == SLIDING else None, rotaries[t], kit, tp)
            for t in types
        )
        self.norm = GemmaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kit.norm)
        self.make_fused_layers = kit.fused_layers  # Gemma 3 only (backends/select.py decides)
        self.fused_layers = None  # built by bind_kv_cache: it reads the caches and the packed weights

    def bind_kv_cache(self, cache: torch.Tensor, window_cache: torch.Tensor | None = None) -> None:
        """Give each attention layer its views of the KV pools (engine/kv_cache.py)."""
        bind_layer_caches(self.layers, cache, window_cache)
        if self.make_fused_layers is not None:
            self.fused_layers = self.make_fused_layers(self, gemma=True, windowed=window_cache is not None)

    def forward(self, input_ids, positions, meta):
        x = self.embed_tokens(input_ids)
        # the scale rounded to the model dtype first, as transformers does (sqrt(3072) is 55.5 in bfloat16)
        x = x * torch.tensor(self.embed_scale, dtype=torch.float32).to(x.dtype)
        if self.fused_layers is not None and self.fused_layers.handles(meta):
            x, _ = self.fused_layers(x, positions, meta)
        else:
            for layer in self.layers:
                x = layer(positions, x, meta)
        return self.norm(x)


class GemmaForCausalLM(LlamaForCausalLM):
    """Weights load, tie and process as Llama's; the decoder stack and the logits' cap are Gemma's."""

    base_model = GemmaModel

    def __init__(self, cfg, max_positions: int, opts=None, tp=None, kit: LayerKit = REFERENCE):
        super().__init__(cfg, max_positions, opts, tp, kit)
        self.final_softcap = getattr(cfg, "final_logit_softcapping", None)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        logits = self.lm_head(hidden)
        if logits is None or self.final_softcap is None:
            return logits
        return torch.tanh(logits / self.final_softcap) * self.final_softcap
