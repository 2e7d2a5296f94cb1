"""Sampler: turns last-position logits into next tokens, for a whole batch at once.

Order (as vLLM's v1 sampler): the grammar masks of constrained rows (structured outputs), penalties on raw logits -> temperature -> min-p -> top-k -> top-p -> draw.
A seeded request draws with a uniform that depends only on (seed, output position): its tokens then depend
on nothing else in the batch, and a preempted, recomputed request draws the same tokens again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_SEED_MIX = 0x9E3779B97F4A7C15  # spreads (seed, step) pairs over 64 bits (splitmix64's increment)
_MASK64 = (1 << 64) - 1


@dataclass
class SamplingBatch:
    """Per-row sampling settings as tensors, built by the runner from each sequence's params."""

    temperature: torch.Tensor  # [B], 0 for greedy rows
    top_k: torch.Tensor | None  # [B] long, vocab size where unused
    top_p: torch.Tensor | None  # [B]
    min_p: torch.Tensor | None  # [B]
    all_greedy: bool
    seeds: list[tuple[int, int] | None]  # (seed, output position) per row, or None
    # penalties (None when no row uses them)
    output_tokens: torch.Tensor | None = None  # [B, N] padded with vocab size
    repetition_penalty: torch.Tensor | None = None
    presence_penalty: torch.Tensor | None = None
    frequency_penalty: torch.Tensor | None = None
    prompt_mask: torch.Tensor | None = None  # [B, V] bool, prompt tokens (repetition penalty sees them)
    num_logprobs: int = -1  # max requested top-N, -1 when none
    # structured outputs: the allowed tokens of the constrained rows, one bit per token (llguidance's layout)
    token_bitmask: torch.Tensor | None = None  # [R, ceil(V / 32)] int32
    bitmask_rows: torch.Tensor | None = None  # [R] long, their rows in the batch


def first_max(x: torch.Tensor) -> torch.Tensor:
    """Index of each row's largest value, the first on ties: argmax's answer (max().indices is the faster
    of the two on CPU). The CPU backend passes the Sampler a native kernel with the same answer."""
    return x.max(dim=-1).indices


class Sampler:
    def __init__(self, generator: torch.Generator, argmax=first_max):
        """`argmax`: the greedy pick, rows -> index of the first largest value (chosen once per engine)."""
        self.generator = generator
        self.argmax = argmax

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch):
        """Returns (token ids [B], logprobs [B, V] of the raw distribution or None)."""
        logits = logits.float()
        logprobs = torch.log_softmax(logits, dim=-1) if batch.num_logprobs >= 0 else None
        if batch.token_bitmask is not None:  # before everything else, so each filter sees only allowed tokens
            apply_token_bitmask(logits, batch.bitmask_rows, batch.token_bitmask)
        if batch.output_tokens is not None:
            logits = apply_penalties(logits, batch)
        if batch.all_greedy:
            return self.argmax(logits), logprobs
        greedy = batch.temperature == 0
        temp = torch.where(greedy, torch.ones_like(batch.temperature), batch.temperature)
        probs = self._filtered_probs(logits / temp.unsqueeze(1), batch)
        sampled = self._draw(probs, batch.seeds)
        return (torch.where(greedy, self.argmax(logits), sampled) if bool(greedy.any()) else sampled), logprobs

    @staticmethod
    def _filtered_probs(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The distribution each row draws from: the scaled logits' softmax over the tokens the filters keep."""
        return filter_logits(logits, batch.top_k, batch.top_p, batch.min_p).softmax(dim=-1)

    def _draw(self, probs: torch.Tensor, seeds: list) -> torch.Tensor:
        # one uniform per row, inverted through the row's cumulative distribution: a draw from probs at
        # the cost of one pass over the row (an exponential race needs a random number per token, which
        # took ~60 ms per step for 64 rows of a 49k vocabulary on two CPU cores); a seeded row's uniform
        # comes from its (seed, position) alone
        u = torch.rand(probs.shape[0], generator=self.generator, device=probs.device, dtype=torch.float64)
        seeded = [(row, seeded_uniform(*seed)) for row, seed in enumerate(seeds) if seed is not None]
        if seeded:
            rows, values = zip(*seeded)
            u[list(rows)] = torch.tensor(values, dtype=torch.float64, device=probs.device)
        return inverse_cdf(probs, u)


def seeded_uniform(seed: int, position: int) -> float:
    """A uniform in [0, 1) that depends only on (seed, output position): splitmix64's finalizer over the
    pair, 53 bits (a generator object per row cost ~0.1 ms to seed, several ms per step for a batch)."""
    x = (seed * _SEED_MIX + position + _SEED_MIX) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return ((x ^ (x >> 31)) >> 11) * 2.0**-53


_CDF_BLOCK = 256  # tokens per partial sum: the walk reads the block sums, then one block


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row, the first token whose cumulative probability exceeds u * (the row's total): token i is
    drawn with probability p_i / total when u is uniform in [0, 1), and a token of probability 0 never is
    (its cumulative sum equals its predecessor's). Sums in float64; rounding at a block's end falls back
    to the block's last token of non-zero probability, never to a zero one."""
    rows, vocab = probs.shape
    pad = (-vocab) % _CDF_BLOCK
    blocks = torch.nn.functional.pad(probs, (0, pad)) if pad else probs
    blocks = blocks.reshape(rows, -1, _CDF_BLOCK)
    cum = blocks.sum(dim=-1).double().cumsum(dim=-1)  # [R, nb] (a float64 sum would copy the whole row first)
    target = (u * cum[:, -1]).unsqueeze(1)  # [R, 1]
    k = torch.searchsorted(cum, target, right=True).clamp_(max=cum.shape[1] - 1)  # the block holding it
    base = torch.where(k > 0, cum.gather(1, (k - 1).clamp(min=0)), torch.zeros_like(target))
    inside = blocks.gather(1, k.unsqueeze(-1).expand(rows, 1, _CDF_BLOCK)).squeeze(1)  # [R, block]
    j = torch.searchsorted(inside.double().cumsum(dim=-1) + base, target, right=True).squeeze(1)
    positions = torch.arange(_CDF_BLOCK, device=probs.device)
    last = torch.where(inside > 0, positions, 0).max(dim=-1).values
    return k.squeeze(1) * _CDF_BLOCK + torch.minimum(j, last)


_BYTE_BITS: dict[torch.device, torch.Tensor] = {}


def unpack_bitmask(bits: torch.Tensor, vocab: int) -> torch.Tensor:
    """[R, W] int32 bit masks -> [R, vocab] bool. Token t is bit t % 32 of word t // 32; read as bytes
    (little-endian, as every CPU and GPU we run on), token t is bit t % 8 of byte t // 8, so one lookup
    in a 256 x 8 table unpacks a byte."""
    table = _BYTE_BITS.get(bits.device)
    if table is None:
        table = (torch.arange(256, device=bits.device).unsqueeze(1) >> torch.arange(8, device=bits.device)) & 1
        table = _BYTE_BITS[bits.device] = table.bool()
    as_bytes = bits.contiguous().view(torch.uint8).long()  # [R, 4W]
    return table[as_bytes].view(bits.shape[0], -1)[:, :vocab]


def apply_token_bitmask(logits: torch.Tensor, rows: torch.Tensor, bits: torch.Tensor) -> None:
    """-inf, in place, on the tokens each constrained row's grammar forbids (logits beyond the mask's
    words, padding of the vocabulary, are forbidden too)."""
    if logits.device.type == "cpu" and logits.dtype == torch.float32:
        # llguidance's native kernel reads the bits in place: ~10x faster than unpacking them to a bool
        # tensor (1.7 against 17 ms for 64 rows of a 49k vocabulary), the same result
        from llguidance.torch import apply_token_bitmask_inplace

        if rows.numel() == logits.shape[0] and bool((rows == torch.arange(rows.numel())).all()):
            apply_token_bitmask_inplace(logits, bits.contiguous())
        else:
            part = logits[rows]
            apply_token_bitmask_inplace(part, bits.contiguous())
            logits[rows] = part
        return
    rows, bits = rows.to(logits.device), bits.to(logits.device, non_blocking=True)
    vocab = logits.shape[-1]
    allowed = unpack_bitmask(bits, min(vocab, bits.shape[1] * 32))
    if allowed.shape[1] < vocab:
        allowed = torch.nn.functional.pad(allowed, (0, vocab - allowed.shape[1]), value=False)
    logits[rows] = logits[rows].masked_fill(~allowed, float("-inf"))


def filter_logits(
    logits: torch.Tensor, top_k: torch.Tensor | None, top_p: torch.Tensor | None, min_p: torch.Tensor | None
) -> torch.Tensor:
    """-inf on the tokens the filters drop, in vLLM's order: min-p, then top-k, then top-p on what is left.

    Tokens tied on one logit are kept or dropped together: top-k keeps every token tied with the k-th,
    and top-p keeps every token tied with the least likely one it needs (a sort breaks ties in any order,
    so cutting inside a tie would make the kept set depend on it). A row whose filter is off (top_k =
    vocab size, top_p = 1, min_p = 0) keeps every token of non-zero probability.
    """
    if min_p is not None:
        probs = logits.softmax(dim=-1)
        cutoff = probs.max(dim=-1, keepdim=True).values * min_p.unsqueeze(1)
        logits = logits.masked_fill(probs < cutoff, float("-inf"))
    if top_k is None and top_p is None:
        return logits
    sorted_logits = logits.sort(dim=-1).values  # ascending
    vocab = logits.shape[-1]
    if top_k is not None:
        threshold = sorted_logits.gather(1, (vocab - top_k.clamp(1, vocab)).unsqueeze(1))
        sorted_logits = sorted_logits.masked_fill(sorted_logits < threshold, float("-inf"))
    if top_p is not None:
        cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # drop the least likely tokens while what is left still holds top_p: a prefix of the ascending order
        drop = cum <= (1 - top_p).unsqueeze(1)
        drop[:, -1] = False  # always keep the most likely token
        threshold = sorted_logits.gather(1, drop.sum(dim=-1, keepdim=True))
    return logits.masked_fill(logits < threshold, float("-inf"))


def apply_penalties(logits: torch.Tensor, b: SamplingBatch) -> torch.Tensor:
    vocab = logits.shape[-1]
    counts = torch.zeros(logits.shape[0], vocab + 1, device=logits.device)
    counts.scatter_add_(1, b.output_tokens, torch.ones_like(b.output_tokens, dtype=counts.dtype))
    counts = counts[:, :vocab]
    seen = counts > 0
    if b.prompt_mask is not None:
        seen_any = seen | b.prompt_mask
        rep = b.repetition_penalty.unsqueeze(1)
        penalized = torch.where(logits > 0, logits / rep, logits * rep)
        logits = torch.where(seen_any, penalized, logits)
    logits = logits - b.frequency_penalty.unsqueeze(1) * counts
    logits = logits - b.presence_penalty.unsqueeze(1) * seen.float()
    return logits
