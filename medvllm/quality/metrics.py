"""Per-token comparison metrics between a reference and a candidate model, in plain PyTorch.

All logits are [T, V] for the same T positions of the same tokens. Reductions run in float64 so the
metric's own rounding stays far below the differences it measures (bf16 vs float32 is ~1e-3 nats).
"""

from __future__ import annotations

import math

import torch


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


def kl_per_token(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """[T] KL(reference || candidate) in nats: what the candidate loses where the reference puts its mass."""
    ref, cand = log_probs(ref_logits), log_probs(cand_logits)
    kl = (ref.exp() * (ref - cand)).sum(dim=-1)
    return kl.clamp_min(0.0)  # exact math is >= 0; float rounding can give -1e-17


def top1_agrees(ref_logits: torch.Tensor, cand_logits: torch.Tensor) -> torch.Tensor:
    """[T] bool: both models' most likely next token is the same."""
    return ref_logits.argmax(dim=-1) == cand_logits.argmax(dim=-1)


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[T] negative log-likelihood (nats) of each target token under the logits at its position."""
    return -log_probs(logits).gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


def perplexity(nll: torch.Tensor) -> float:
    """exp of the mean per-token NLL: a uniform model over V tokens has perplexity V."""
    return math.exp(float(nll.double().mean()))


def percentile(values: torch.Tensor, q: float) -> float:
    """The q-th percentile (0..100), linearly interpolated between order statistics (numpy's default)."""
    return float(torch.quantile(values.double(), q / 100.0))


def relative_change(reference: float, candidate: float) -> float:
    return (candidate - reference) / reference


def greedy_matches(ref_tokens: list[int], cand_tokens: list[int], n: int) -> tuple[int, int]:
    """(matching positions, positions compared) over the first n generated tokens.

    Positions run to the longer continuation's end; past both ends (both stopped at EOS) nothing is
    compared, so a candidate that stops where the reference stops is not penalized for it.
    """
    a, b = ref_tokens[:n], cand_tokens[:n]
    compared = max(len(a), len(b))
    same = sum(1 for i in range(compared) if i < len(a) and i < len(b) and a[i] == b[i])
    return same, compared


def common_prefix(ref_tokens: list[int], cand_tokens: list[int]) -> int:
    """How many leading tokens two continuations share."""
    count = 0
    for x, y in zip(ref_tokens, cand_tokens):
        if x != y:
            break
        count += 1
    return count
