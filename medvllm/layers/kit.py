"""LayerKit: how a model's layers compute, decided once per engine and handed to every layer at
construction (medvllm/backends/select.py makes it). The default kit is the plain PyTorch reference:
float weights and F.linear, PyTorch norms, SDPA over the gathered cache, one layer at a time."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from medvllm.layers.linear import UNQUANTIZED, LinearMethod
from medvllm.layers.norm import NormKernel


@dataclass(frozen=True)
class LayerKit:
    linear: LinearMethod = UNQUANTIZED  # the decoder layers' projections
    attention_linear: LinearMethod | None = None  # q/k/v's, where it differs from `linear` (None: the same)
    lm_head: LinearMethod = UNQUANTIZED
    # how the token table is held: float | int8-rows (shared with an int8 tied head) | gguf (the file's blocks)
    embedding: str = "float"
    norm: NormKernel | None = None  # None: RMSNorm's PyTorch path
    attention: object | None = None  # a backend called as backend(layer, q, meta); None: SDPA
    # builds, from the model once its KV cache is bound, a callable that runs every decoder layer of a
    # step in one go ((hidden, positions, meta) -> (hidden, residual)) with a `handles(meta)` test
    fused_layers: Callable | None = None
    argmax: Callable | None = None  # the sampler's greedy pick; None: PyTorch's


REFERENCE = LayerKit()
