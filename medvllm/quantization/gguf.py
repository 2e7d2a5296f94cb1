"""`gguf`: a GGUF file's weights run as the file stores them, on CPU.

Each Linear keeps the file's quantized blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K), copied
once out of the file and never expanded to float; the native kernels
(medvllm/backends/cpu/gguf_matmul.py) multiply on them with the activations quantized per block of 32
at call time. A merged projection (q/k/v, gate/up) whose parts differ in type (a Q4_K_M file stores
some in Q6_K) keeps one segment per type, each writing its own columns of the output. Tensors of a
type without a kernel (F32, F16, BF16, the 2- and 3-bit and i-quants) become float32 segments: the
exact floats of the file, reported in runtime_info's quantization `types`.

The reference these numerics are held to is the same file decoded to float32 (`quality compare` with
no profile); docs/QUALITY.md has the figures, and llama.cpp's on the same texts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medvllm.backends.cpu import gguf_matmul as kernels
from medvllm.backends.cpu.native import binding
from medvllm.errors import ConfigError
from medvllm.layers.linear import LinearBase, LinearMethod

log = logging.getLogger(__name__)

# Activations per block of 32, as `gguf_activations` names them: 1 part = int8 (llama.cpp's scheme), 2 parts =
# int8 plus an int8 residual (~15 bits, the same weight loads, twice the multiplies: the cost shows only
# where batches make the matmuls compute-bound). Measured on the shipped clinical texts against the file in
# float32 (docs/QUALITY.md), int8 everywhere moved the default model's answers the most through q/k/v
# (whose inputs carry the residual stream's outlier channels) and the LM head; "mixed" keeps those two in
# int8x2 and halves the multiplies of the rest (o, gate/up, down: most of a decoder layer's).
PARTS = {"int8": 1, "int8x2": 2}
MIXED = {"decoder": 1, "attention": 2, "head": 2}


@dataclass(frozen=True)
class Segment:
    row: int  # first output row (column of the result) it computes
    rows: int
    qtype: object  # gguf.GGMLQuantizationType
    blocks: torch.Tensor | None  # uint8 [rows, bytes per row]: a type the kernels run
    weight: torch.Tensor | None  # float32 [rows, inputs]: any other type, decoded

    @property
    def nbytes(self) -> int:
        return self.blocks.numel() if self.blocks is not None else 4 * self.weight.numel()


@dataclass(frozen=True)
class GGUFWeight:
    segments: tuple[Segment, ...]
    n_in: int

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)

    @property
    def types(self) -> list[str]:
        return [s.qtype.name for s in self.segments]


class GGUFMethod(LinearMethod):
    name = "gguf"
    kernel = "native"
    frees_weight = True
    holds_float_weight = False  # the loader hands this method the file's blocks

    def __init__(self, parts: int = 2):
        binding.library()  # raises NativeUnavailable with the reason
        self.parts = parts

    def pack(self, layer: LinearBase) -> GGUFWeight:
        parts = sorted(layer.block_parts, key=lambda p: p[0])
        if sum(b.shape[0] for _, b in parts) != layer.out_features or not parts:
            raise ConfigError(
                f"quantization_method='gguf' got no GGUF blocks for a layer of {layer.out_features} outputs: "
                "it runs only on a .gguf model file; use quantization_method='dynamic' or none for other models"
            )
        segments: list[Segment] = []
        for row, blocks in parts:
            last = segments[-1] if segments else None
            if last is not None and last.blocks is not None and last.qtype == blocks.qtype and _runs(blocks.qtype):
                # q, k and v of one type: one segment, one kernel call a step
                merged = torch.cat((last.blocks, blocks.blocks))
                segments[-1] = Segment(last.row, last.rows + blocks.shape[0], last.qtype, merged, None)
                continue
            segments.append(_segment(row, blocks, layer.in_features))
        return GGUFWeight(tuple(segments), layer.in_features)

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        w: GGUFWeight = layer.packed
        count = x.numel() // x.shape[-1]
        rows = _whole_groups(x.reshape(-1, x.shape[-1]).float().contiguous())
        out = torch.empty(rows.shape[0], layer.out_features, dtype=torch.float32)
        quantized = None
        for s in w.segments:
            if s.blocks is None:
                out[:, s.row : s.row + s.rows] = F.linear(rows, s.weight)
                continue
            if quantized is None:  # once for every segment of the layer
                quantized = kernels.quantize_activations(rows, self.parts)
            kernels.matmul_quantized(quantized, *rows.shape, s.blocks, int(s.qtype), self.parts, out, s.row)
        out = out[:count]
        if layer.bias is not None:
            out += layer.bias
        return out.view(*x.shape[:-1], layer.out_features)


def methods(activations: str) -> tuple[GGUFMethod, GGUFMethod, GGUFMethod]:
    """(decoder projections', q/k/v's, LM head's) methods for a `gguf_activations` setting."""
    if activations == "mixed":
        return GGUFMethod(MIXED["decoder"]), GGUFMethod(MIXED["attention"]), GGUFMethod(MIXED["head"])
    one = GGUFMethod(PARTS[activations])
    return one, one, one


def _whole_groups(rows: torch.Tensor) -> torch.Tensor:
    """Rows padded with zeros to a whole group of the kernel's where more than a few are left over. The
    kernel runs groups of 16 tokens over weight rows unpacked once and each leftover token on the
    blocks themselves, so 5+ leftovers cost more than a group (Gemma 3 270M's MLP, 30 tokens: 2.0 ms,
    padded to 32: 0.9 ms). A token's result does not depend on the others (gguf_matmul.c), so the
    padding changes nothing but the time."""
    tail = rows.shape[0] % kernels.GROUP
    if tail <= 4:
        return rows
    return torch.cat((rows, rows.new_zeros(kernels.GROUP - tail, rows.shape[1])))


def _runs(qtype) -> bool:
    return int(qtype) in kernels.SUPPORTED


def _segment(row: int, blocks, n_in: int) -> Segment:
    if _runs(blocks.qtype):
        return Segment(row, blocks.shape[0], blocks.qtype, blocks.blocks.contiguous(), None)
    float_rows = blocks.float_view()
    weight = float_rows.float() if float_rows is not None else blocks.dequantize()
    return Segment(row, blocks.shape[0], blocks.qtype, None, weight.contiguous())


def describe_types(layers) -> dict[str, int]:
    """How many segments of each GGUF type the model's gguf layers hold (runtime_info)."""
    counts: dict[str, int] = {}
    for layer in layers:
        if isinstance(layer.packed, GGUFWeight):
            for name in layer.packed.types:
                counts[name] = counts.get(name, 0) + 1
    return counts


def describe_activations(layers) -> dict[str, int]:
    """How many gguf layers take their inputs as int8 and as int8x2 (runtime_info)."""
    names = {parts: name for name, parts in PARTS.items()}
    counts: dict[str, int] = {}
    for layer in layers:
        if isinstance(layer.packed, GGUFWeight):
            name = names[layer.method.parts]
            counts[name] = counts.get(name, 0) + 1
    return counts
