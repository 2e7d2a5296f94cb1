"""Builds one step's tensors from the scheduled sequences: token ids, positions, cache slots, masks."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from medvllm.engine.sequence import Sequence
from medvllm.layers.attention import AttentionMetadata
from medvllm.layers.sampler import SamplingBatch


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    attn: AttentionMetadata
    logits_index: torch.Tensor  # [S] the token whose logits each sampling sequence samples from
    sampling: list[int]  # the S rows of the step's sequences that sample (not a prompt's inner chunk)


def step_end(seq: Sequence, is_prefill: bool) -> int:
    """The step computes the sequence's tokens up to here (a prefill chunk may stop short of its end)."""
    return (seq.prefill_end or len(seq)) if is_prefill else len(seq)


def samples(seq: Sequence, is_prefill: bool) -> bool:
    """Whether the step computes the sequence's last token (and so samples the next one)."""
    return step_end(seq, is_prefill) == len(seq)


def prepare_step(
    seqs: list[Sequence], is_prefill: bool, block_size: int, device: torch.device, all_logits: bool = False
) -> StepInputs:
    input_ids: list[int] = []
    positions: list[int] = []
    slots: list[int] = []
    windowed = bool(seqs[0].window_table)  # the sliding-window layers have a pool of their own
    window_slots: list[int] = []
    query_lens: list[int] = []
    context_lens: list[int] = []
    for seq in seqs:
        start = seq.num_computed_tokens if is_prefill else len(seq) - 1
        end = step_end(seq, is_prefill)
        input_ids.extend(seq.token_ids[start:end])
        span = range(start, end)
        positions.extend(span)
        table = seq.block_table
        slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
        if windowed:
            table = seq.window_table
            window_slots.extend(table[p // block_size] * block_size + p % block_size for p in span)
        query_lens.append(end - start)
        context_lens.append(end)
    max_blocks = max(len(s.block_table) for s in seqs)
    tables = [s.block_table + [0] * (max_blocks - len(s.block_table)) for s in seqs]

    def t(x):
        return torch.tensor(x, dtype=torch.long, device=device)

    block_tables = t(tables)
    meta = AttentionMetadata(
        slot_mapping=t(slots),
        block_tables=block_tables,
        flat_block_tables=block_tables.flatten(),
        context_lens=t(context_lens),
        is_decode=not is_prefill,
    )
    lens = t(query_lens)
    ends = torch.cumsum(lens, 0)
    if is_prefill:
        _add_padding(meta, lens, ends, t(context_lens))
    else:
        meta.query_positions = meta.context_lens.unsqueeze(1) - 1
    if windowed:
        meta.window = _window_meta(meta, seqs, max_blocks, t(window_slots), t)
    sampling = [i for i, seq in enumerate(seqs) if samples(seq, is_prefill)]
    if all_logits:
        logits_index = torch.arange(len(input_ids), device=device)
    else:
        logits_index = (ends - 1)[t(sampling)] if len(sampling) < len(seqs) else ends - 1
    return StepInputs(t(input_ids), t(positions), meta, logits_index, sampling)


def _window_meta(meta: AttentionMetadata, seqs: list[Sequence], max_blocks: int, slots, t) -> AttentionMetadata:
    """The step as the sliding-window layers see it: their own slots and tables (padding and blocks out
    of the window point at the null block), the same queries and positions."""
    tables = t([s.window_table + [0] * (max_blocks - len(s.window_table)) for s in seqs])
    return replace(
        meta, slot_mapping=slots, block_tables=tables, flat_block_tables=tables.flatten(), masks=None, backend_state={}
    )


def _add_padding(meta: AttentionMetadata, lens: torch.Tensor, ends: torch.Tensor, ctx: torch.Tensor) -> None:
    """Index maps between the flat token dim [T] and queries padded to [B, Q]."""
    total = int(ends[-1])
    max_q = int(lens.max())
    offs = torch.arange(max_q, device=lens.device)
    valid = offs < lens.unsqueeze(1)  # [B, Q]
    starts = ends - lens
    meta.pad_index = torch.where(valid, starts.unsqueeze(1) + offs, total)  # T is the zero row
    meta.unpad_index = torch.nonzero(valid.flatten(), as_tuple=True)[0]
    # padded queries look at key 0 only, which keeps their softmax finite
    meta.query_positions = torch.where(valid, (ctx - lens).unsqueeze(1) + offs, 0)


def sampling_batch(seqs: list[Sequence], vocab_size: int, device: torch.device) -> SamplingBatch:
    params = [s.params for s in seqs]
    all_greedy = all(p.greedy for p in params)
    num_logprobs = max((p.logprobs for p in params if p.logprobs is not None), default=-1)

    def f(values):
        return torch.tensor(values, dtype=torch.float32, device=device)

    batch = SamplingBatch(
        temperature=f([p.temperature for p in params]),
        top_k=None,
        top_p=None,
        min_p=None,
        all_greedy=all_greedy,
        seeds=[(p.seed, s.num_output_tokens) if p.seed is not None else None for s, p in zip(seqs, params)],
        num_logprobs=num_logprobs,
    )
    if not all_greedy:
        if any(p.top_k > 0 for p in params):
            batch.top_k = torch.tensor(
                [p.top_k if p.top_k > 0 else vocab_size for p in params], dtype=torch.long, device=device
            )
        if any(p.top_p < 1.0 for p in params):
            batch.top_p = f([p.top_p for p in params])
        if any(p.min_p > 0.0 for p in params):
            batch.min_p = f([p.min_p for p in params])
    if any(p.has_penalties for p in params):
        _add_penalties(batch, seqs, vocab_size, device)
    return batch


def _add_penalties(batch: SamplingBatch, seqs: list[Sequence], vocab_size: int, device) -> None:
    outs = [s.output_token_ids for s in seqs]
    width = max(1, max(len(o) for o in outs))
    batch.output_tokens = torch.tensor(
        [o + [vocab_size] * (width - len(o)) for o in outs], dtype=torch.long, device=device
    )
    params = [s.params for s in seqs]
    batch.repetition_penalty = torch.tensor([p.repetition_penalty for p in params], device=device)
    batch.presence_penalty = torch.tensor([p.presence_penalty for p in params], device=device)
    batch.frequency_penalty = torch.tensor([p.frequency_penalty for p in params], device=device)
    if any(p.repetition_penalty != 1.0 for p in params):
        mask = torch.zeros(len(seqs), vocab_size, dtype=torch.bool, device=device)
        for row, s in enumerate(seqs):
            mask[row, torch.tensor(s.token_ids[: s.num_prompt_tokens], dtype=torch.long, device=device)] = True
        batch.prompt_mask = mask
