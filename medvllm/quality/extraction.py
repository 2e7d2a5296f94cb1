"""The clinical extraction set: short synthetic notes (no patient data) and the JSON Schemas their
structured outputs must satisfy. Each note is asked for one task, in turn: medications, allergies,
vitals, triage, or a nested summary of all four.

Every schema is bounded (maxLength, maxItems, enums, integer ranges, patterns for decimals), so a
constrained generation
always ends well inside EXTRACTION_MAX_TOKENS: a run that hits the limit counts as a failure.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources

EXTRACTION_MAX_TOKENS = 768

_NAME = {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9 /-]*$", "minLength": 2, "maxLength": 40}
_TEXT = {"type": "string", "minLength": 1, "maxLength": 60}
# Decimals are strings with a pattern. A JSON "number" has no bound on its digits (at temperature 0.8
# one ran on to max_tokens), and bounding them with multipleOf: 0.1 fails jsonschema's own check, which
# divides in binary floating point (36.8 / 0.1 = 367.99999999999994: "not a multiple").
_DECIMAL = {"type": "string", "pattern": "^[0-9]{1,5}([.][0-9]{1,2})?$"}
MEDICATION = {
    "type": "object",
    "properties": {
        "name": _NAME,
        "dose": _DECIMAL,
        "unit": {"enum": ["mg", "mcg", "g", "mL", "units", "mg/kg"]},
        "route": {"enum": ["oral", "intravenous", "intramuscular", "subcutaneous", "nebulized", "topical"]},
        "frequency": {
            "enum": [
                "once",
                "daily",
                "twice daily",
                "three times daily",
                "four times daily",
                "every 4 hours",
                "every 6 hours",
                "every 8 hours",
                "as needed",
                "at night",
            ]
        },
    },
    "required": ["name", "dose", "unit", "route", "frequency"],
    "additionalProperties": False,
}
ALLERGY = {
    "type": "object",
    "properties": {"substance": _NAME, "reaction": _TEXT, "severity": {"enum": ["mild", "moderate", "severe"]}},
    "required": ["substance", "reaction", "severity"],
    "additionalProperties": False,
}
VITALS = {
    "type": "object",
    "properties": {
        "heart_rate": {"type": "integer", "minimum": 20, "maximum": 250},
        "blood_pressure": {"type": "string", "pattern": "^[0-9]{2,3}/[0-9]{2,3}$"},
        "respiratory_rate": {"type": "integer", "minimum": 4, "maximum": 60},
        "spo2_percent": {"type": "integer", "minimum": 50, "maximum": 100},
        "temperature_c": {"type": "string", "pattern": "^(3[0-9]|4[0-5])([.][0-9])?$"},
    },
    "required": ["heart_rate"],
    "additionalProperties": False,
}
TRIAGE = {
    "type": "object",
    "properties": {
        "level": {"enum": ["resuscitation", "emergent", "urgent", "less urgent", "non-urgent"]},
        "reason": _TEXT,
    },
    "required": ["level", "reason"],
    "additionalProperties": False,
}


def _list(items: dict, min_items: int = 0) -> dict:
    return {"type": "array", "items": items, "minItems": min_items, "maxItems": 4}


SCHEMAS = {
    "medications": {
        "type": "object",
        "properties": {"medications": _list(MEDICATION, 1)},
        "required": ["medications"],
        "additionalProperties": False,
    },
    "allergies": {
        "type": "object",
        "properties": {"no_known_allergies": {"type": "boolean"}, "allergies": _list(ALLERGY)},
        "required": ["no_known_allergies", "allergies"],
        "additionalProperties": False,
    },
    "vitals": VITALS,
    "triage": TRIAGE,
    "summary": {
        "type": "object",
        "properties": {
            "age_years": {"type": "integer", "minimum": 0, "maximum": 120},
            "vitals": VITALS,
            "medications": _list(MEDICATION),
            "allergies": _list(ALLERGY),
            "triage": TRIAGE,
        },
        "required": ["age_years", "vitals", "medications", "allergies", "triage"],
        "additionalProperties": False,
    },
}
ASK = {
    "medications": "List the medications with dose, unit, route and frequency.",
    "allergies": "List the allergies with the reaction and its severity.",
    "vitals": "Give the vital signs.",
    "triage": "Give the triage level and the reason.",
    "summary": "Summarise the age, vital signs, medications, allergies and triage level.",
}
SYSTEM = "You extract facts from clinical notes. Answer with JSON only."


@dataclass(frozen=True)
class ExtractionItem:
    id: str
    note: str
    task: str  # a key of SCHEMAS

    @property
    def schema(self) -> dict:
        return SCHEMAS[self.task]

    def messages(self) -> list[dict]:
        return [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Note: {self.note}\n{ASK[self.task]}"},
        ]


def load_extraction_set() -> list[ExtractionItem]:
    """The shipped notes, each with its task (tasks in turn, so every schema gets a share of the notes)."""
    path = resources.files("medvllm.quality") / "data" / "clinical_extraction.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    tasks = list(SCHEMAS)
    return [ExtractionItem(r["id"], r["note"], tasks[i % len(tasks)]) for i, r in enumerate(rows)]


def check(item: ExtractionItem, text: str, finish_reason: str | None) -> str | None:
    """None when `text` parses and validates under the item's schema and the grammar completed;
    otherwise why not, in one line."""
    import jsonschema

    if finish_reason != "stop":
        return f"finish_reason={finish_reason!r}"
    try:
        jsonschema.validate(json.loads(text), item.schema)
    except (ValueError, jsonschema.ValidationError) as e:
        return " ".join(str(e).split())[:200]
    return None
