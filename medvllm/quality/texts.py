"""The clinical text set: JSON lines of {"id", "kind", "text"}, shipped with the package.

The shipped set is written for this project (no patient data): short patient questions, discharge-note
style passages, medication sentences and lab-value sentences. `--texts FILE` swaps in a site's own set
in the same format.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from medvllm.errors import RequestError

SHIPPED = "clinical_texts.jsonl"
QUESTION = "question"  # a kind whose greedy prompt is the question sent through the chat template


@dataclass(frozen=True)
class ClinicalText:
    id: str
    kind: str
    text: str


def shipped_path() -> Path:
    return Path(str(resources.files("medvllm.quality") / "data" / SHIPPED))


def load_texts(path: str | Path | None = None) -> list[ClinicalText]:
    """Every item of the set at `path` (the shipped set when None), in file order."""
    where = Path(path) if path is not None else shipped_path()
    try:
        lines = where.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise RequestError(
            f"cannot read the text set {str(where)!r}: {e.strerror}; "
            'give a JSON-lines file of {"id", "kind", "text"} objects'
        ) from None
    items, seen = [], set()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        items.append(_parse(line, f"{where.name}:{number}"))
        if items[-1].id in seen:
            raise RequestError(f"{where.name}:{number}: id {items[-1].id!r} appears twice: give each text its own id")
        seen.add(items[-1].id)
    if not items:
        raise RequestError(f'the text set {str(where)!r} is empty: add at least one {{"id", "kind", "text"}} line')
    return items


def _parse(line: str, where: str) -> ClinicalText:
    try:
        data = json.loads(line)
    except ValueError as e:
        raise RequestError(f"{where} is not valid JSON ({e}): write one object per line") from None
    if not isinstance(data, dict):
        raise RequestError(f'{where} is a {type(data).__name__}, not an object: write {{"id", "kind", "text"}}')
    for key in ("id", "kind", "text"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise RequestError(f"{where}: {key!r} is missing or empty: every line needs non-empty id, kind and text")
    return ClinicalText(data["id"], data["kind"], data["text"])


def pick(items: list[ClinicalText], limit: int | None) -> list[ClinicalText]:
    """The first `limit` items taken round-robin across kinds, so a small slice still covers every kind."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise RequestError(f"--limit {limit} is invalid: it must be at least 1")
    by_kind: dict[str, list[ClinicalText]] = {}
    for item in items:
        by_kind.setdefault(item.kind, []).append(item)
    queues = list(by_kind.values())
    chosen: list[ClinicalText] = []
    while len(chosen) < limit:
        for queue in queues:
            if queue and len(chosen) < limit:
                chosen.append(queue.pop(0))
    return chosen
