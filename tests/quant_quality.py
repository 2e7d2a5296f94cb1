"""Helpers for the precision/quantization tests: teacher-forced KL and greedy agreement vs float32."""

from __future__ import annotations

import torch

# Clinical passages, teacher-forced through both engines (written for these tests).
PASSAGES = [
    "The patient is a 67-year-old man with hypertension, type 2 diabetes and stage 3 chronic kidney disease "
    "who presented with two days of worsening shortness of breath. On admission his blood pressure was 168/94, "
    "heart rate 104, and oxygen saturation 89% on room air. Labs showed potassium 5.6 mmol/L, creatinine "
    "2.1 mg/dL and BNP 1450 pg/mL. He was given intravenous furosemide 40 mg twice daily and lisinopril was held.",
    "Discharge instructions: take metoprolol 25 mg by mouth twice a day and atorvastatin 40 mg every evening. "
    "Check your blood sugar before meals and at bedtime. Call your doctor if you have chest pain, fainting, "
    "swelling in your legs, or a weight gain of more than two pounds in one day. Follow up in cardiology clinic "
    "in two weeks with a basic metabolic panel to recheck potassium and kidney function.",
]


def teacher_forced(reference, candidate, tokenizer) -> dict:
    """Mean / p99 per-token KL(reference || candidate) and top-1 agreement over PASSAGES."""
    kls, agree = [], []
    for text in PASSAGES:
        ids = tokenizer.encode(text)
        ref = reference.engine.score(ids).log_softmax(-1)
        cand = candidate.engine.score(ids).log_softmax(-1)
        kls.append((ref.exp() * (ref - cand)).sum(-1))
        agree.append(ref.argmax(-1) == cand.argmax(-1))
    kl, agree = torch.cat(kls), torch.cat(agree)
    return {"kl_mean": kl.mean().item(), "kl_p99": kl.quantile(0.99).item(), "top1": agree.float().mean().item()}


def max_ngram_repeats(tokens: list[int], n: int = 4) -> int:
    counts: dict[tuple, int] = {}
    for i in range(len(tokens) - n + 1):
        key = tuple(tokens[i : i + n])
        counts[key] = counts.get(key, 0) + 1
    return max(counts.values(), default=0)
