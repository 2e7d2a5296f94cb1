"""Sizing the KV pool on CUDA from what the largest step really needs.

The budget is the share of the card `gpu_memory_utilization` allows, less what is in use once the
weights are loaded (by us and by anything else on the card), less the activations of the largest step
the scheduler can make. The activations are measured, not guessed: one forward pass at
max_num_batched_tokens (and max_num_seqs rows of logits) runs on a scratch cache first, as vLLM does.
Blocks the caching allocator kept from loading are handed back first, so they count as free.
"""

from __future__ import annotations

import torch

from medvllm.engine.sequence import Sequence
from medvllm.engine.step_inputs import prepare_step


def kv_budget_bytes(total: int, free: int, utilization: float, activations: int) -> int:
    """What the KV pool may take: utilization * total, less what is in use, less the largest step's activations."""
    return int(total * utilization - (total - free) - activations)


def largest_step(config, max_model_len: int) -> tuple[int, int]:
    """(sequences, tokens each) of the largest prompt step the scheduler can form."""
    seqs = max(1, min(config.max_num_seqs, config.max_num_batched_tokens))
    return seqs, max(1, min(max_model_len, config.max_num_batched_tokens // seqs))


@torch.inference_mode()
def run_largest_step(model, config, max_model_len: int, kv_dtype: torch.dtype, device: torch.device) -> None:
    """One forward pass and its logits at the largest step's size, on a scratch KV cache of its own."""
    from medvllm.sampling_params import SamplingParams

    block_size = config.kvcache_block_size
    count, tokens = largest_step(config, max_model_len)
    per_seq = -(-tokens // block_size)
    seqs = []
    for i in range(count):
        seq = Sequence(f"profile-{i}", None, [0] * tokens, SamplingParams(max_tokens=1), block_size)
        seq.block_table = list(range(i * per_seq, (i + 1) * per_seq))
        seqs.append(seq)
    attn = model.model.layers[0].self_attn
    shape = (2, len(model.model.layers), count * per_seq, block_size, attn.num_kv_heads, attn.head_dim)
    model.bind_kv_cache(torch.zeros(shape, dtype=kv_dtype, device=device))
    step = prepare_step(seqs, True, block_size, device)
    hidden = model(step.input_ids, step.positions, step.attn)
    model.compute_logits(hidden[step.logits_index])


def measured_budget(model, config, max_model_len: int, kv_dtype: torch.dtype, device: torch.device) -> int:
    """The KV budget in bytes on a CUDA device, after profiling the largest step."""
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_largest_step(model, config, max_model_len, kv_dtype, device)
    activations = torch.cuda.max_memory_allocated(device) - before
    torch.cuda.empty_cache()  # the scratch cache and the step's buffers go back
    free, total = torch.cuda.mem_get_info(device)
    return kv_budget_bytes(total, free, config.gpu_memory_utilization, activations)
