"""Linear layers whose weight storage and matmul belong to a pluggable LinearMethod.

The model says *what* a projection is (replicated, column-split, row-split across tensor-parallel
ranks); a LinearMethod says *how* it is stored and multiplied (float, packed panels, dynamic int8,
bitsandbytes). The method is chosen once per engine (medvllm/backends/select.py) and handed to the
layer at construction. Once the layer's checkpoint tensors are in, `process_weights_after_loading`
asks the method for the layer's packed form, which the layer keeps as `packed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvllm.distributed.parallel import SINGLE, TensorParallel
from medvllm.distributed.partition import split


class LinearMethod:
    """How a linear layer holds its weight and computes x @ W.T + b. This base class is the plain
    PyTorch reference: the float weight as loaded, F.linear."""

    name = "float"
    frees_weight = False  # whether the packed form replaces the float weight, which is then released
    packs_from_host = False  # whether the float weight is loaded into host memory and packed onto the device
    holds_float_weight = True  # False: the layer never allocates a float weight (it keeps a file's blocks)

    def pack(self, layer: LinearBase):
        """The layer's weight in this method's form, built from the loaded float weight (None: as is)."""
        return None

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, layer.weight, layer.bias)


UNQUANTIZED = LinearMethod()


class Float32Logits(LinearMethod):
    """The LM head of a bf16/fp16 model, computed in float32 from a float32 copy of its weight: low
    precision logits flip the top token noticeably more often (docs/QUALITY.md)."""

    name = "float32-logits"
    frees_weight = True  # the low-precision copy, unless the embedding table is the same tensor

    def pack(self, layer: LinearBase):
        bias = None if layer.bias is None else layer.bias.detach().float()
        return layer.weight.detach().float(), bias

    def apply(self, layer: LinearBase, x: torch.Tensor) -> torch.Tensor:
        weight, bias = layer.packed
        return F.linear(x.float(), weight, bias)


class LinearBase(nn.Module):
    """`in_features`/`out_features` are this rank's shapes; the checkpoint tensors are the full ones.

    The weight loader hands `load_weight` the full checkpoint tensor; each layer keeps its rank's slice.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp: TensorParallel | None = None,
        method: LinearMethod = UNQUANTIZED,
    ):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        shape = (out_features, in_features) if method.holds_float_weight else (0,)
        self.weight = nn.Parameter(torch.empty(shape), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features), requires_grad=False) if bias else None
        self.method = method
        self.packed = None  # the method's form of the weight, once loaded
        self.processed = False
        self.shares_weight = False  # a tied LM head: its weight is the embedding's table too
        self.block_parts: list = []  # (first row, BlockTensor) as a GGUF file's blocks arrive, until packed
        self.tp = tp or SINGLE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.method.apply(self, x)

    def process_weights_after_loading(self) -> None:
        """Called once this layer's checkpoint tensors are in: keep the method's packed form, and release
        the float weight it replaces. A shared table (a tied head's) stays with the embedding: this layer
        only lets go of it. Otherwise the storage is dropped in place, as the loader may still hold the
        Parameter object."""
        self.packed = self.method.pack(self)
        self.processed = True
        self.block_parts = []
        if not self.method.frees_weight:
            return
        empty = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)
        if self.shares_weight:
            self.weight = nn.Parameter(empty, requires_grad=False)
        else:
            self.weight.data = empty

    # --- loading: full checkpoint tensor in, this rank's slice kept -------------------------------------
    def full_shape(self, name: str, shard: int | None = None) -> tuple[int, ...] | None:
        """Shape the checkpoint tensor `name` ("weight"/"bias") must have; None if this layer has none."""
        if getattr(self, name, None) is None:
            return None
        return (self.out_features, self.in_features) if name == "weight" else (self.out_features,)

    def load_weight(self, name: str, full: torch.Tensor, shard: int | None = None) -> None:
        self._store(name, full, 0)

    def take_blocks(self, blocks, row: int = 0) -> None:
        """Keep a GGUF file's blocks (a BlockTensor) for rows row.. of this layer's weight: the method packs
        them (a tied head is handed the embedding's)."""
        if self.method.holds_float_weight:
            raise TypeError(f"linear method {self.method.name!r} takes float weights, not a GGUF file's blocks")
        self.block_parts.append((row, blocks))

    def _store(self, name: str, part, row: int) -> None:
        """Put `part` (this layer's slice of a checkpoint tensor) at rows row.. of parameter `name`."""
        if name == "weight" and not self.method.holds_float_weight:
            self.take_blocks(part, row)
            return
        if not isinstance(part, torch.Tensor):  # a BlockTensor for a float weight: its floats
            part = part.dequantize()
        getattr(self, name).data.narrow(0, row, part.shape[0]).copy_(part)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, method={self.method.name}"
        )


class ReplicatedLinear(LinearBase):
    """Every rank holds the whole weight (the LM head, small projections)."""


class ColumnParallelLinear(LinearBase):
    """Output features split across tensor-parallel ranks; no communication needed after it.

    `rows` = (start, size) of the full output this rank computes (default: an even split).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp: TensorParallel | None = None,
        rows: tuple[int, int] | None = None,
        method: LinearMethod = UNQUANTIZED,
    ):
        tp = tp or SINGLE
        self.full_out = out_features
        self.rows = rows or split(out_features, tp.size, tp.rank)
        super().__init__(in_features, self.rows[1], bias, tp, method)

    def full_shape(self, name, shard=None):
        if getattr(self, name, None) is None:
            return None
        return (self.full_out, self.in_features) if name == "weight" else (self.full_out,)

    def load_weight(self, name, full, shard=None):
        self._store(name, full.narrow(0, *self.rows), 0)


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several projections of the same input in one matmul (q/k/v, gate/up), column-split per rank.

    `output_sizes` are the full projections' sizes, in order; `shard_rows` gives, per projection, the
    (start, size) rows this rank keeps (default: an even split of each). After construction
    `output_sizes` holds this rank's sizes, the ones its weight is made of.
    """

    def __init__(
        self,
        in_features: int,
        output_sizes: list[int],
        bias: bool = False,
        tp: TensorParallel | None = None,
        shard_rows: list[tuple[int, int]] | None = None,
        method: LinearMethod = UNQUANTIZED,
    ):
        tp = tp or SINGLE
        self.full_output_sizes = list(output_sizes)
        self.row_slices = list(shard_rows or [split(n, tp.size, tp.rank) for n in output_sizes])
        self.output_sizes = [size for _, size in self.row_slices]
        LinearBase.__init__(self, in_features, sum(self.output_sizes), bias, tp, method)

    def shard_rows(self, shard: int) -> tuple[int, int]:
        """(start, size) of one merged projection's rows in this layer's weight."""
        return sum(self.output_sizes[:shard]), self.output_sizes[shard]

    def full_shape(self, name, shard=None):
        if getattr(self, name, None) is None:
            return None
        n = sum(self.full_output_sizes) if shard is None else self.full_output_sizes[shard]
        return (n, self.in_features) if name == "weight" else (n,)

    def load_weight(self, name, full, shard=None):
        if shard is None:  # the checkpoint already holds the merged tensor
            offsets = [sum(self.full_output_sizes[:i]) for i in range(len(self.full_output_sizes))]
            for i, (offset, n) in enumerate(zip(offsets, self.full_output_sizes)):
                self.load_weight(name, full.narrow(0, offset, n), i)
            return
        start, size = self.row_slices[shard]
        self._store(name, full.narrow(0, start, size), self.shard_rows(shard)[0])


class RowParallelLinear(LinearBase):
    """Input features split across ranks; partial outputs are summed (all-reduce) after it.

    `cols` = (start, size) of the full input this rank multiplies (default: an even split). The bias
    lives on rank 0 only, so the sum adds it once.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = False,
        tp: TensorParallel | None = None,
        cols: tuple[int, int] | None = None,
        method: LinearMethod = UNQUANTIZED,
    ):
        tp = tp or SINGLE
        self.full_in = in_features
        self.cols = cols or split(in_features, tp.size, tp.rank)
        self.has_bias = bias
        super().__init__(self.cols[1], out_features, bias and tp.is_driver, tp, method)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.method.apply(self, x)
        if self.tp.size > 1:
            out = self.tp.all_reduce(out.contiguous())
        return out

    def full_shape(self, name, shard=None):
        if name == "weight":
            return (self.out_features, self.full_in)
        return (self.out_features,) if name == "bias" and self.has_bias else None

    def load_weight(self, name, full, shard=None):
        if name == "weight":
            self._store(name, full.narrow(1, *self.cols), 0)
        elif self.bias is not None:  # ranks other than 0 drop the bias
            self._store(name, full, 0)
