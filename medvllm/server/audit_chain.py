"""The audit trail's tamper evidence: each line carries the SHA-256 of the line before it and its own.

A line is a JSON object whose last two keys are "prev" (the previous line's hash; 64 zeros for the first
line ever) and "hash" (SHA-256 of the line as written without its "hash" key). Editing a line breaks
its own hash; deleting, inserting or reordering lines breaks the next line's "prev". The chain runs on
across rotated files and restarts: a new file starts from the last hash of the one before.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass

GENESIS = "0" * 64
SEPARATORS = (",", ":")


def chained_line(record: dict, prev: str) -> tuple[str, str]:
    """(the line to append, with its newline; its hash)."""
    body = json.dumps(record | {"prev": prev}, ensure_ascii=False, separators=SEPARATORS)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    return body[:-1] + f',"hash":"{digest}"}}\n', digest


def line_hashes(line: str) -> tuple[str, str, str]:
    """(prev as written, hash as written, hash of the content); ValueError for a line that is not one."""
    record = json.loads(line)
    if not isinstance(record, dict) or "hash" not in record or "prev" not in record:
        raise ValueError("not an audit record (no prev/hash)")
    written = record.pop("hash")
    body = json.dumps(record, ensure_ascii=False, separators=SEPARATORS)
    return record["prev"], written, hashlib.sha256(body.encode("utf-8")).hexdigest()


def rotated_files(path: str) -> list[str]:
    """`path`'s rotated files (path.1, path.2, ...), oldest first."""
    folder, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.(\d+)$")
    found = [(int(m.group(1)), n) for n in os.listdir(folder) if (m := pattern.match(n))]
    return [os.path.join(folder, n) for _, n in sorted(found)]


def last_hash(path: str) -> str:
    """Where the chain goes on: the last line's hash of `path`, else of its newest rotated file, else GENESIS."""
    for file in [path] + rotated_files(path)[::-1]:
        if os.path.isfile(file) and os.path.getsize(file) > 0:
            with open(file, "rb") as f:
                f.seek(max(0, os.path.getsize(file) - 65536))
                tail = f.read().decode("utf-8", errors="replace").rstrip("\n").rsplit("\n", 1)[-1]
            return line_hashes(tail)[1]
    return GENESIS


@dataclass
class Verdict:
    lines: int  # lines checked, all files together
    broken: str | None  # "FILE:LINE: why", the first break; None when the chain holds
    starts_after: str  # the first line's prev: GENESIS for a trail from its start


def verify(files: list[str]) -> Verdict:
    """Checks the chain through `files`, in the order given (oldest first)."""
    prev, count, first = None, 0, None
    for file in files:
        with open(file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                count += 1
                where = f"{file}:{number}"
                try:
                    written_prev, written, actual = line_hashes(line)
                except ValueError as e:
                    return Verdict(count, f"{where}: unreadable ({e}): the line was edited or cut", first or "")
                if written != actual:
                    return Verdict(count, f"{where}: its hash does not match its content: the line was edited", first)
                if prev is not None and written_prev != prev:
                    return Verdict(
                        count,
                        f"{where}: does not follow the line before it: a line was deleted, inserted or reordered",
                        first,
                    )
                first = first if first is not None else written_prev
                prev = written
    return Verdict(count, None, first or GENESIS)
