"""Vocab-parallel token embedding and LM head: each rank holds a slice of the vocabulary's rows.

Embedding: a rank looks up the ids in its slice, zeros the rest, and an all-reduce sums the slices.
LM head: a rank computes the logits of its slice of the vocabulary; rank 0 gathers the full row
(the sampler runs there only). Both split the vocabulary the same way, so tied weights still tie.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from medvllm.distributed.parallel import SINGLE, TensorParallel
from medvllm.distributed.partition import split, split_sizes
from medvllm.layers.int8_rows import dequantize, int8_rows
from medvllm.layers.linear import UNQUANTIZED, ColumnParallelLinear, LinearMethod


class VocabParallelEmbedding(nn.Module):
    """`form` says how the table is held once loaded:
    - "float": the checkpoint's rows in the model's dtype;
    - "int8-rows": int8 rows with one float32 scale per row and group of inputs (symmetric,
      layers/int8_rows.py), the float rows freed. A looked-up row is then q * scale in float32: about a
      quarter of the memory, each value within half its group's step of the original;
    - "gguf": a GGUF file's own blocks (a BlockTensor), never expanded: a looked-up row is decoded to
      exactly the floats the float loader makes from the file."""

    FORMS = ("float", "int8-rows", "gguf")

    def __init__(self, vocab_size: int, hidden_size: int, tp: TensorParallel | None = None, form: str = "float"):
        super().__init__()
        if form not in self.FORMS:
            raise ValueError(f"embedding form {form!r}: expected one of {self.FORMS}")
        self.tp = tp or SINGLE
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.rows = split(vocab_size, self.tp.size, self.tp.rank)
        shape = (0,) if form == "gguf" else (self.rows[1], hidden_size)
        self.weight = nn.Parameter(torch.empty(shape), requires_grad=False)
        self.form = form
        self.int8_rows: torch.Tensor | None = None
        self.row_scale: torch.Tensor | None = None
        self.blocks = None  # form "gguf": this rank's rows of the file's table

    def process_weights_after_loading(self) -> None:
        if self.form == "int8-rows" and self.int8_rows is None:
            self.use_int8_rows(*int8_rows(self.weight))

    def use_int8_rows(self, rows: torch.Tensor, scale: torch.Tensor) -> None:
        """Look tokens up in these int8 rows (a tied LM head's, which are this table's) and free the float
        table."""
        self.int8_rows, self.row_scale = rows, scale
        self.weight.data = torch.empty(0, dtype=self.weight.dtype, device=self.weight.device)

    def _lookup(self, ids: torch.Tensor) -> torch.Tensor:
        if self.blocks is not None:
            return self.blocks.rows_as_float(ids.reshape(-1)).view(*ids.shape, self.hidden_size)
        if self.int8_rows is None:
            return F.embedding(ids, self.weight)
        flat = ids.reshape(-1)
        rows = dequantize(self.int8_rows.index_select(0, flat), self.row_scale.index_select(0, flat))
        return rows.view(*ids.shape, self.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp.size == 1:
            return self._lookup(input_ids)
        start, size = self.rows
        local = input_ids - start
        mine = (local >= 0) & (local < size)
        out = self._lookup(torch.where(mine, local, 0))
        out = out.masked_fill(~mine.unsqueeze(-1), 0)
        return self.tp.all_reduce(out)

    def full_shape(self, name: str, shard: int | None = None) -> tuple[int, ...] | None:
        return (self.vocab_size, self.hidden_size) if name == "weight" else None

    def load_weight(self, name: str, full: torch.Tensor, shard: int | None = None) -> None:
        if self.form == "gguf":
            self.blocks = full.narrow(0, *self.rows)
            return
        w = self.weight
        if (
            tuple(full.shape) == tuple(w.shape)
            and full.dtype == w.dtype
            and full.device == w.device
            and full.is_contiguous()
            and full.untyped_storage().nbytes() == full.numel() * full.element_size()
        ):
            # the whole table in a tensor of its own, as loaders hand it over: keep it instead of a copy,
            # which would hold the largest tensor of a small model twice
            w.data = full
            return
        w.data.copy_(full.narrow(0, *self.rows))

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size} (rows {self.rows[0]}..{sum(self.rows)}), hidden={self.hidden_size}"


class ParallelLMHead(ColumnParallelLinear):
    """hidden -> logits; rank 0 returns the full [N, vocab] logits, other ranks None."""

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        tp: TensorParallel | None = None,
        method: LinearMethod = UNQUANTIZED,
        embedding: VocabParallelEmbedding | None = None,
    ):
        """`embedding`: the token embedding whose table this head shares (tied weights), or None."""
        super().__init__(hidden_size, vocab_size, bias=False, tp=tp, method=method)
        self.sizes = split_sizes(vocab_size, self.tp.size)
        if embedding is not None:
            self.share_table(embedding)

    def share_table(self, embedding: VocabParallelEmbedding) -> None:
        """Read the token embedding's table as this head's weight (tied weights): held once."""
        self.weight = embedding.weight
        self.shares_weight = True

    def forward(self, x: torch.Tensor) -> torch.Tensor | None:
        logits = self.method.apply(self, x)
        if self.tp.size == 1:
            return logits
        return self.tp.gather_last_dim(logits, self.sizes)
