"""CPU attention backend: decode steps read the paged KV cache in place through a native kernel.

The SDPA path copies every sequence's blocks into one padded tensor per layer before attending; for a
decode step that copy and the masked SDPA call cost more than the attention arithmetic. The kernel in
native/paged_attention.c walks each sequence's block table instead. Prompt steps take it too while
every context is short, or every sequence's run of queries is (MAX_PROMPT_CONTEXT): a mixed step's
one-token decodes and short chunks of a long prompt attend over the paged cache in place, where SDPA
would gather every sequence's whole context and pad each decode to the chunk's length. Steps with a
long run of queries over a long context stay on SDPA, whose blocked kernel is faster when many queries
share their keys. Whole int8 prompt steps timed both ways put the crossover between a short prompt,
where the kernel wins, and a long one, where SDPA does.
"""

from __future__ import annotations

import torch

from medvllm.backends.cpu.native import binding
from medvllm.backends.cpu.native.binding import CACHE_DTYPES

# Prompt steps whose contexts, or runs of queries, are all this short attend through the kernel too,
# each prompt token over the paged cache on its own; past it, SDPA's blocked kernel over the gathered
# context is faster (timed on whole prompt steps, as the module docstring says).
MAX_PROMPT_CONTEXT = 768


def attends_in_place(meta) -> bool:
    """Whether the step's queries attend through the kernel (else SDPA): decode steps, and prompt steps
    whose contexts or whose runs of queries (pad_index's width, known on the host) are all short."""
    if meta.is_decode or meta.pad_index.shape[1] <= MAX_PROMPT_CONTEXT:
        return True
    return int(meta.context_lens.max()) <= MAX_PROMPT_CONTEXT


def native_kernel():
    """The loaded kernel, or raises NativeUnavailable with the reason."""
    binding.library()
    return binding.paged_attention


def paged_attention(
    kernel,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    token_rows: torch.Tensor,
    token_positions: torch.Tensor,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """q: [T, H, D]; caches [num_blocks, block_size, Hkv, D]. Token t attends to positions
    0..token_positions[t] (within the window) of block_tables[token_rows[t]]. Returns [T, H, D] in q's dtype."""
    if k_cache.dtype not in CACHE_DTYPES:
        raise TypeError(f"the native paged attention reads float32 or bfloat16 caches, not {k_cache.dtype}")
    q32 = q.to(torch.float32).contiguous()
    out = torch.empty_like(q32)
    tables = block_tables.to(torch.int64).contiguous()
    rows = token_rows.to(torch.int64).contiguous()
    positions = token_positions.to(torch.int64).contiguous()
    status = kernel(
        out, q32, k_cache, v_cache, tables, rows, positions, scale, sliding_window or 0, torch.get_num_threads()
    )
    if status != 0:
        raise MemoryError("the native paged attention could not allocate its scratch memory")
    return out.to(q.dtype)


class CpuPagedBackend:
    """The "cpu-paged" attention backend, handed to every PagedAttention layer at construction."""

    name = "cpu-paged"

    def __init__(self):
        self.kernel = native_kernel()  # raises NativeUnavailable with the reason

    def __call__(self, attn, q: torch.Tensor, meta) -> torch.Tensor:
        step = meta.backend_state.get(self.name)
        if step is None:  # once per step, shared by every layer
            step = meta.backend_state[self.name] = _token_rows_and_positions(meta, q.shape[0])
        if step is _SDPA:
            return attn.sdpa(q, meta)
        out = paged_attention(self.kernel, q, attn.k_cache, attn.v_cache, *step, attn.scale, attn.sliding_window)
        return out.view(q.shape[0], -1)


_SDPA = ()  # a prompt step with a long context: SDPA's blocked kernel


def _token_rows_and_positions(meta, tokens: int):
    """(block tables, each token's row in them, each token's position) for the kernel, or _SDPA."""
    tables = meta.block_tables.to(torch.int64).contiguous()
    if meta.is_decode:  # one token per sequence, in block-table order
        return tables, torch.arange(tokens), meta.query_positions.reshape(-1).to(torch.int64).contiguous()
    if not attends_in_place(meta):
        return _SDPA
    width = meta.pad_index.shape[1]  # the padded [B, Q] layout: a token's row is its index // Q
    rows = torch.div(meta.unpad_index, width, rounding_mode="floor").to(torch.int64)
    positions = meta.query_positions.reshape(-1)[meta.unpad_index].to(torch.int64).contiguous()
    return tables, rows, positions
