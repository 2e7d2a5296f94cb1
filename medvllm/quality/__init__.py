"""Profile-vs-reference quality comparison: KL, top-1 agreement, perplexity delta, greedy match."""

from medvllm.quality.compare import QualityResult, compare
from medvllm.quality.gate import TIERS, Thresholds, crossed, tier_of
from medvllm.quality.texts import ClinicalText, load_texts, pick

__all__ = [
    "ClinicalText",
    "QualityResult",
    "TIERS",
    "Thresholds",
    "compare",
    "crossed",
    "load_texts",
    "pick",
    "tier_of",
]
