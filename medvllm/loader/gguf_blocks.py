"""A GGUF tensor kept as the file stores it: rows of quantized blocks, never expanded to float.

The `gguf` linear method multiplies on these blocks (medvllm/backends/cpu/gguf_matmul.py). A BlockTensor
behaves enough like a weight tensor for the loader: it has the logical `shape`, and `narrow` takes
whole rows (output channels: tensor-parallel column splits, merged q/k/v) or whole blocks of a row
(row-parallel input splits, only on a block boundary).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from medvllm.errors import ModelLoadError

FLOAT_TYPES = {
    GGMLQuantizationType.F32: torch.float32,
    GGMLQuantizationType.F16: torch.float16,
    GGMLQuantizationType.BF16: torch.bfloat16,
}


@dataclass(frozen=True)
class BlockTensor:
    qtype: GGMLQuantizationType
    blocks: torch.Tensor  # uint8 [rows, bytes per row], the file's bytes
    shape: torch.Size  # logical (rows, inputs)

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def nbytes(self) -> int:
        return self.blocks.numel()

    def narrow(self, dim: int, start: int, length: int) -> BlockTensor:
        if dim == 0:
            rows = self.blocks.narrow(0, start, length)
            return BlockTensor(self.qtype, rows, torch.Size((length, self.shape[1])))
        block, block_bytes = GGML_QUANT_SIZES[self.qtype]
        if start % block or length % block:
            raise ModelLoadError(
                f"a {self.qtype.name} weight of {self.shape[1]} inputs cannot be split into inputs {start}.."
                f"{start + length - 1}: its blocks hold {block} inputs each; choose a tensor_parallel_size that splits "
                f"the inputs on a multiple of {block}, or load without quantization_method='gguf'"
            )
        cols = self.blocks.narrow(1, start // block * block_bytes, length // block * block_bytes)
        return BlockTensor(self.qtype, cols, torch.Size((self.shape[0], length)))

    def take_rows(self, index: torch.Tensor) -> BlockTensor:
        """The rows in `index`'s order (a row permutation moves whole rows of blocks)."""
        return BlockTensor(self.qtype, self.blocks.index_select(0, index), self.shape)

    def float_view(self) -> torch.Tensor | None:
        """F32/F16/BF16 rows as a tensor of that dtype (no copy), else None."""
        dtype = FLOAT_TYPES.get(self.qtype)
        return None if dtype is None else self.blocks.view(dtype)

    def rows_as_float(self, index: torch.Tensor) -> torch.Tensor:
        """float32 [len(index), inputs]: the rows in `index`, decoded as dequantize() decodes them."""
        from medvllm.loader.gguf_weights import decode_rows

        return decode_rows(self.blocks.index_select(0, index), self.qtype)

    def dequantize(self) -> torch.Tensor:
        """float32 [rows, inputs], the same floats the float loader makes from the file."""
        from medvllm.loader.gguf_weights import dequantize

        return dequantize(self.blocks.numpy(), self.qtype)
