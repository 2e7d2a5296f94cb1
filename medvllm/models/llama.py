"""The Llama family: Llama 2/3.x, SmolLM, Mistral, Qwen2, Qwen3 share this decoder.

Family members differ by a few switches read from the Hugging Face config: bias on q/k/v (Qwen2),
per-head RMSNorm on q and k (Qwen3), sliding-window attention (Mistral). q/k/v and gate/up are each
one merged projection: one matmul instead of three (two) per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medvllm.distributed.parallel import SINGLE, TensorParallel
from medvllm.distributed.partition import head_shard
from medvllm.layers.attention import AttentionMetadata, PagedAttention, bind_layer_caches
from medvllm.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from medvllm.layers.kit import REFERENCE, LayerKit
from medvllm.layers.linear import MergedColumnParallelLinear, RowParallelLinear
from medvllm.layers.norm import RMSNorm
from medvllm.layers.rotary import get_rotary, rope_parameters


@dataclass
class ArchOptions:
    qkv_bias: bool = False
    qk_norm: bool = False
    sliding_window: int | None = None  # the window of the layers that have one (None: every layer sees all)
    # what the engine's backend choice reads besides the switches above (backends/select.py)
    attn_softcap: float | None = None  # tanh soft-capping of the attention scores (Gemma 2)
    llama_decoder: bool = True  # the decoder layer is Llama's (what the fused CPU decoder layer implements)
    gemma3_decoder: bool = False  # Gemma 3's layer, which the fused CPU decoder layer implements too
    fp16_overflows: bool = False  # activations leave float16's range (Gemma 3): refused in float16


@dataclass(frozen=True)
class Projections:
    """q/k/v and output projections of one attention layer, split over tensor-parallel ranks by heads.
    Head counts and sizes are this rank's (all of them when tp=1)."""

    head_dim: int
    num_heads: int
    num_kv_heads: int
    qkv_proj: MergedColumnParallelLinear
    o_proj: RowParallelLinear


def attention_projections(cfg, qkv_bias: bool, o_bias: bool, kit: LayerKit, tp: TensorParallel) -> Projections:
    total_heads = cfg.num_attention_heads
    total_kv_heads = cfg.num_key_value_heads or total_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // total_heads
    shard = head_shard(total_heads, total_kv_heads, tp.size, tp.rank)
    q_rows, kv_rows = (shard.q_start * d, shard.num_heads * d), (shard.kv_start * d, shard.num_kv_heads * d)
    qkv = MergedColumnParallelLinear(
        cfg.hidden_size,
        [total_heads * d, total_kv_heads * d, total_kv_heads * d],
        bias=qkv_bias,
        tp=tp,
        shard_rows=[q_rows, kv_rows, kv_rows],
        method=kit.attention_linear or kit.linear,
    )
    o = RowParallelLinear(total_heads * d, cfg.hidden_size, bias=o_bias, tp=tp, cols=q_rows, method=kit.linear)
    return Projections(d, shard.num_heads, shard.num_kv_heads, qkv, o)


class Attention(nn.Module):
    """num_heads / num_kv_heads / q_size / kv_size are this rank's (all of them when tp=1)."""

    def __init__(self, cfg, opts: ArchOptions, max_positions: int, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        o_bias = bool(getattr(cfg, "attention_bias", False))
        p = attention_projections(cfg, opts.qkv_bias or o_bias, o_bias, kit, tp)
        self.head_dim, self.num_heads, self.num_kv_heads = p.head_dim, p.num_heads, p.num_kv_heads
        self.q_size, self.kv_size = p.num_heads * p.head_dim, p.num_kv_heads * p.head_dim
        self.qkv_proj, self.o_proj = p.qkv_proj, p.o_proj
        if opts.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, kit.norm)
            self.k_norm = RMSNorm(self.head_dim, cfg.rms_norm_eps, kit.norm)
        self.qk_norm = opts.qk_norm
        # shared by every layer; kept out of the module tree so casts and meta-init leave it alone
        self.__dict__["rotary"] = get_rotary(self.head_dim, max_positions, rope_parameters(cfg))
        self.attn = PagedAttention(
            self.num_heads, self.num_kv_heads, self.head_dim, self.head_dim**-0.5, opts.sliding_window, kit.attention
        )

    def forward(self, positions: torch.Tensor, x: torch.Tensor, meta: AttentionMetadata):
        qkv = self.qkv_proj(x)
        qk, v = qkv.split([self.q_size + self.kv_size, self.kv_size], dim=-1)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = qk.split([self.q_size, self.kv_size], dim=-1)
            q = self.q_norm(q.view(-1, self.num_heads, self.head_dim))
            k = self.k_norm(k.view(-1, self.num_kv_heads, self.head_dim))
            q, k = self.rotary(positions, q, k)
        else:  # q and k rotated in one pass: half the ops of rotating each
            qk = self.rotary.rotate(positions, qk.view(-1, self.num_heads + self.num_kv_heads, self.head_dim))
            q, k = qk.split([self.num_heads, self.num_kv_heads], dim=1)
        return self.o_proj(self.attn(q, k, v, meta))


class MLP(nn.Module):
    def __init__(self, cfg, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        if getattr(cfg, "hidden_act", "silu") != "silu":
            from medvllm.errors import ModelLoadError

            raise ModelLoadError(f"hidden_act={cfg.hidden_act!r} is not supported: Llama-family models use silu")
        bias = bool(getattr(cfg, "mlp_bias", False))
        self.gate_up_proj = MergedColumnParallelLinear(
            cfg.hidden_size, [cfg.intermediate_size] * 2, bias=bias, tp=tp, method=kit.linear
        )
        self.down_proj = RowParallelLinear(cfg.intermediate_size, cfg.hidden_size, bias=bias, tp=tp, method=kit.linear)
        self.intermediate = self.gate_up_proj.output_sizes[0]  # this rank's share

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.intermediate, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg, opts: ArchOptions, max_positions: int, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        self.self_attn = Attention(cfg, opts, max_positions, kit, tp)
        self.mlp = MLP(cfg, kit, tp)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kit.norm)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kit.norm)

    def forward(self, positions, x, residual, meta):
        if residual is None:
            residual, x = x, self.input_layernorm(x)
        else:
            x, residual = self.input_layernorm(x, residual)
        x = self.self_attn(positions, x, meta)
        x, residual = self.post_attention_layernorm(x, residual)
        return self.mlp(x), residual


class LlamaModel(nn.Module):
    def __init__(self, cfg, opts: ArchOptions, max_positions: int, kit: LayerKit, tp: TensorParallel = SINGLE):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(cfg.vocab_size, cfg.hidden_size, tp, form=kit.embedding)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg, opts, max_positions, kit, tp) for _ in range(cfg.num_hidden_layers)
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, kit.norm)
        self.make_fused_layers = kit.fused_layers
        self.fused_layers = None  # built by bind_kv_cache: it reads the cache and the packed weights

    def bind_kv_cache(self, cache: torch.Tensor, window_cache: torch.Tensor | None = None) -> None:
        """Give each attention layer its views of the KV pools (engine/kv_cache.py)."""
        bind_layer_caches(self.layers, cache, window_cache)
        # the fused layer reads one block table per step: not built over a separate window pool
        if self.make_fused_layers is not None and window_cache is None:
            self.fused_layers = self.make_fused_layers(self)

    def forward(self, input_ids, positions, meta):
        x, residual = self.embed_tokens(input_ids), None
        if self.fused_layers is not None and self.fused_layers.handles(meta):
            x, residual = self.fused_layers(x, positions, meta)
        else:
            for layer in self.layers:
                x, residual = layer(positions, x, residual, meta)
        x, _ = self.norm(x, residual)
        return x


class LlamaForCausalLM(nn.Module):
    base_model = LlamaModel  # the decoder stack: (cfg, opts, max_positions, kit, tp) -> module with .layers
    # HF checkpoint names folded into our merged projections: hf suffix -> (our suffix, shard index)
    packed_modules = {
        "q_proj": ("qkv_proj", 0),
        "k_proj": ("qkv_proj", 1),
        "v_proj": ("qkv_proj", 2),
        "gate_proj": ("gate_up_proj", 0),
        "up_proj": ("gate_up_proj", 1),
    }

    def __init__(
        self,
        cfg,
        max_positions: int,
        opts: ArchOptions | None = None,
        tp: TensorParallel | None = None,
        kit: LayerKit = REFERENCE,
    ):
        super().__init__()
        self.config = cfg
        tp = tp or SINGLE
        self.model = self.base_model(cfg, opts or self.arch_options(cfg), max_positions, kit, tp)
        self.tie_word_embeddings = bool(getattr(cfg, "tie_word_embeddings", False))
        # vocab-split; full logits on rank 0
        self.lm_head = ParallelLMHead(
            cfg.hidden_size,
            cfg.vocab_size,
            tp,
            kit.lm_head,
            self.model.embed_tokens if self.tie_word_embeddings else None,
        )

    @staticmethod
    def arch_options(cfg) -> ArchOptions:
        return ArchOptions()

    def forward(self, input_ids, positions, meta) -> torch.Tensor:
        return self.model(input_ids, positions, meta)

    def process_embeddings_after_loading(self) -> None:
        """The token table and the head, once both are in: an int8 tied head hands the embedding its rows,
        so one int8 table serves both; a tied head on a GGUF file's blocks multiplies on the table's."""
        head, embedding = self.lm_head, self.model.embed_tokens
        if self.tie_word_embeddings and embedding.blocks is not None:
            head.take_blocks(embedding.blocks)
        head.process_weights_after_loading()
        rows = getattr(head.packed, "rows", None)
        if self.tie_word_embeddings and embedding.form == "int8-rows" and rows is not None:
            embedding.use_int8_rows(rows, head.packed.scale)
        else:
            embedding.process_weights_after_loading()

    def tie_weights(self) -> None:
        """Point a tied head at the embedding's table again (giving a meta model storage unties them)."""
        if self.tie_word_embeddings:
            self.lm_head.share_table(self.model.embed_tokens)

    def bind_kv_cache(self, cache: torch.Tensor, window_cache: torch.Tensor | None = None) -> None:
        self.model.bind_kv_cache(cache, window_cache)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        """[N, vocab] logits on rank 0; None on the other tensor-parallel ranks."""
        return self.lm_head(hidden)
