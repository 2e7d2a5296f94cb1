"""Run a text set through a reference and a candidate engine and measure how far the candidate drifts.

Teacher forcing: both models score the same tokens (`ModelRunner.score`), so every position compares
two next-token distributions given the same context. Greedy continuation: both generate from the same
prompt tokens, and the continuations are compared token by token.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from medvllm.errors import ConfigError, RequestError
from medvllm.quality import metrics as M
from medvllm.quality.texts import QUESTION, ClinicalText
from medvllm.sampling_params import SamplingParams

GEN_TOKENS = 32  # greedy continuation length compared
MAX_SCORE_TOKENS = 512  # longer texts are scored on their first 512 tokens
P99 = 99.0


@dataclass
class ItemScores:
    id: str
    kind: str
    kl: torch.Tensor  # [T] nats
    agree: torch.Tensor  # [T] bool
    nll_reference: torch.Tensor  # [T]
    nll_candidate: torch.Tensor  # [T]
    greedy_same: int = 0
    greedy_compared: int = 0
    greedy_prefix: int = 0


@dataclass
class QualityResult:
    metrics: dict
    by_kind: dict[str, dict]
    items: list[dict]
    seconds: float


def compare(
    reference,
    candidate,
    texts: list[ClinicalText],
    gen_tokens: int = GEN_TOKENS,
    on_progress: Callable[[str], None] | None = None,
) -> QualityResult:
    """`reference` and `candidate` are LLMs that share a tokenizer (the same model, other numerics)."""
    started = time.perf_counter()
    check_same_vocabulary(reference, candidate, texts[0].text)
    tell = on_progress or (lambda message: None)
    scores: list[ItemScores] = []
    for number, item in enumerate(texts, 1):
        tell(f"scoring {number}/{len(texts)}")
        scores.append(score_item(reference, candidate, item))
    tell("greedy continuations")
    greedy_compare(reference, candidate, texts, scores, gen_tokens)
    return QualityResult(
        metrics=summarize(scores),
        by_kind=by_kind(scores),
        items=[item_row(s) for s in scores],
        seconds=time.perf_counter() - started,
    )


def check_same_vocabulary(reference, candidate, sample: str) -> None:
    ref_v, cand_v = reference.engine.runner.vocab_size, candidate.engine.runner.vocab_size
    same_tokens = reference.tokenizer.encode(sample) == candidate.tokenizer.encode(sample)
    if ref_v != cand_v or not same_tokens:
        raise ConfigError(
            f"the reference ({reference.engine.source.description}, vocabulary {ref_v}) and the "
            f"candidate ({candidate.engine.source.description}, vocabulary {cand_v}) do not share a "
            "tokenizer, so their token distributions cannot be compared: use the same model "
            "(or one with the same tokenizer) on both sides"
        )


def score_item(reference, candidate, item: ClinicalText) -> ItemScores:
    ids = list(reference.tokenizer.encode(item.text))[:MAX_SCORE_TOKENS]
    if len(ids) < 2:
        raise RequestError(f"text {item.id!r} is {len(ids)} token long: give each text at least two tokens")
    # position t's logits predict token t+1, so the last position has no target and is left out
    ref = reference.engine.score(ids)[:-1].cpu()
    cand = candidate.engine.score(ids)[:-1].cpu()
    targets = torch.tensor(ids[1:])
    return ItemScores(
        item.id,
        item.kind,
        M.kl_per_token(ref, cand),
        M.top1_agrees(ref, cand),
        M.token_nll(ref, targets),
        M.token_nll(cand, targets),
    )


def greedy_prompt(llm, item: ClinicalText) -> list[int]:
    """A question goes through the chat template (the way it is asked); other text is continued from
    its first half."""
    if item.kind == QUESTION and getattr(llm.tokenizer, "chat_template", None):
        return llm.encode_chat([{"role": "user", "content": item.text}])
    ids = list(llm.tokenizer.encode(item.text))[:MAX_SCORE_TOKENS]
    return ids[: max(1, len(ids) // 2)]


def greedy_compare(reference, candidate, texts: list[ClinicalText], scores: list[ItemScores], n: int) -> None:
    prompts = [greedy_prompt(reference, item) for item in texts]
    params = SamplingParams(temperature=0.0, max_tokens=n)
    ref_outs = reference.generate(prompts, params)
    cand_outs = candidate.generate(prompts, params)
    for s, r, c in zip(scores, ref_outs, cand_outs):
        a, b = list(r.outputs[0].token_ids), list(c.outputs[0].token_ids)
        s.greedy_same, s.greedy_compared = M.greedy_matches(a, b, n)
        s.greedy_prefix = M.common_prefix(a[:n], b[:n])


def _cat(scores: list[ItemScores], name: str) -> torch.Tensor:
    return torch.cat([getattr(s, name) for s in scores])


def summarize(scores: list[ItemScores]) -> dict:
    """Token-weighted over every scored position of every text."""
    kl = _cat(scores, "kl")
    ppl_ref = M.perplexity(_cat(scores, "nll_reference"))
    ppl_cand = M.perplexity(_cat(scores, "nll_candidate"))
    same = sum(s.greedy_same for s in scores)
    compared = sum(s.greedy_compared for s in scores)
    return {
        "texts": len(scores),
        "scored_tokens": int(kl.numel()),
        "mean_kl": float(kl.mean()),
        "p99_kl": M.percentile(kl, P99),
        "max_kl": float(kl.max()),
        "top1_agreement": float(_cat(scores, "agree").double().mean()),
        "ppl_reference": ppl_ref,
        "ppl_candidate": ppl_cand,
        "ppl_delta": M.relative_change(ppl_ref, ppl_cand),
        "greedy_match_rate": same / compared if compared else 1.0,
        "greedy_tokens_compared": compared,
        "greedy_exact_texts": sum(s.greedy_same == s.greedy_compared for s in scores) / len(scores),
        "greedy_mean_common_prefix": sum(s.greedy_prefix for s in scores) / len(scores),
    }


def by_kind(scores: list[ItemScores]) -> dict[str, dict]:
    groups: dict[str, list[ItemScores]] = {}
    for s in scores:
        groups.setdefault(s.kind, []).append(s)
    out = {}
    for kind, group in groups.items():
        m = summarize(group)
        out[kind] = {
            k: m[k]
            for k in (
                "texts",
                "scored_tokens",
                "mean_kl",
                "p99_kl",
                "top1_agreement",
                "ppl_reference",
                "ppl_candidate",
                "ppl_delta",
                "greedy_match_rate",
            )
        }
    return out


def item_row(s: ItemScores) -> dict:
    return {
        "id": s.id,
        "kind": s.kind,
        "scored_tokens": int(s.kl.numel()),
        "mean_kl": float(s.kl.mean()),
        "max_kl": float(s.kl.max()),
        "top1_agreement": float(s.agree.double().mean()),
        "ppl_reference": M.perplexity(s.nll_reference),
        "ppl_candidate": M.perplexity(s.nll_candidate),
        "greedy_match": [s.greedy_same, s.greedy_compared],
        "greedy_common_prefix": s.greedy_prefix,
    }
