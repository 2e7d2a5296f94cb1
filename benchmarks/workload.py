"""The benchmark workload: mixed-length clinical prompts, built deterministically from one text."""

from __future__ import annotations

import random

CLINICAL_TEXT = (
    "Patient is a 67-year-old male with a history of type 2 diabetes mellitus, hypertension and chronic "
    "kidney disease stage 3, admitted with three days of productive cough, fever to 38.9 C and shortness "
    "of breath. On arrival, oxygen saturation was 89% on room air, respiratory rate 26, blood pressure "
    "104/62, heart rate 112. Chest radiograph showed right lower lobe consolidation. Labs: white cell "
    "count 16.2, creatinine 2.1 (baseline 1.6), lactate 2.8, potassium 5.3, glucose 284. He was started "
    "on ceftriaxone and azithromycin, given 30 mL/kg of crystalloid, and metformin was held because of "
    "the acute kidney injury. Insulin was adjusted with a basal-bolus regimen. Over 48 hours his fever "
    "resolved, lactate normalised and creatinine improved to 1.7. He was discharged on oral amoxicillin-"
    "clavulanate to complete seven days, with follow-up in the diabetes clinic and repeat renal function "
    "in one week. Counselled on sick-day rules for metformin and on signs of worsening infection. "
)


def prompt_token_ids(tokenizer, count: int, min_len: int = 20, max_len: int = 200, seed: int = 0):
    """`count` prompts of lengths uniform in [min_len, max_len], each a different slice of the text."""
    ids = tokenizer.encode(CLINICAL_TEXT * 4)
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        n = rng.randint(min_len, max_len)
        start = rng.randint(0, len(ids) - n)
        prompts.append(ids[start : start + n])
    return prompts
