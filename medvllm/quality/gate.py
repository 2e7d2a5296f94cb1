"""The quality gate: thresholds a candidate must stay within, and which of them a result crosses.

Defaults (docs/QUALITY.md has the measurements behind them) pass bf16 and per-channel int8 on the
default model and fail per-tensor int8 weights, which makes its answers repetitive and wrong.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    max_mean_kl: float = 0.05  # nats per token, KL(reference || candidate)
    max_p99_kl: float = 0.5  # nats, the 99th percentile over every scored token
    min_top1_agreement: float = 0.90  # fraction of positions where both pick the same next token
    max_ppl_increase: float = 0.05  # relative: candidate perplexity at most 5% above the reference's
    min_greedy_match: float = 0.70  # fraction of the first 32 greedy tokens that are the same

    def to_dict(self) -> dict:
        return asdict(self)


# threshold field -> (metric key, "max" or "min", the CLI flag that sets it, label)
RULES = {
    "max_mean_kl": ("mean_kl", "max", "--max-mean-kl", "mean KL"),
    "max_p99_kl": ("p99_kl", "max", "--max-p99-kl", "p99 KL"),
    "min_top1_agreement": ("top1_agreement", "min", "--min-top1", "top-1 agreement"),
    "max_ppl_increase": ("ppl_delta", "max", "--max-ppl-increase", "perplexity change"),
    "min_greedy_match": ("greedy_match_rate", "min", "--min-greedy-match", "greedy match rate"),
}


def crossed(metrics: dict, thresholds: Thresholds) -> dict[str, str]:
    """Threshold name -> one line saying how the metrics cross it; empty when the candidate passes."""
    failures = {}
    for name, (key, kind, flag, label) in RULES.items():
        limit, value = getattr(thresholds, name), metrics[key]
        if (value > limit) if kind == "max" else (value < limit):
            word = "above the maximum" if kind == "max" else "below the minimum"
            failures[name] = f"{label} {value:.4g} is {word} {limit:g} ({flag})"
    return failures
