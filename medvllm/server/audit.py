"""The audit trail: one JSON line per API request, to a file the operator names (--audit-log).

Who (key name, client address), what (endpoint, model and the SHA-256 of its files, deployment profile
and the SHA-256 of the resolved settings), how much and how long (tokens, timings), how it ended
(status, finish reasons), and SHA-256 digests of the prompt and of each output, so a disputed answer
can be matched to its record without the text being stored. The text itself only with --audit-content.

Each line is chained to the one before (server/audit_chain.py; `medvllm audit verify` checks it).

Digests: a prompt's is over the token ids the model read, as compact JSON ("[1,2,3]"), per prompt; an
output's is over its text as UTF-8. `prompt_digest` recomputes the first from a request.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import threading
import time

from medvllm.errors import ConfigError
from medvllm.server.audit_chain import chained_line, last_hash, rotated_files


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prompt_digest(token_ids: list[int]) -> str:
    return sha256_text(json.dumps(list(token_ids), separators=(",", ":")))


def settings_digest(settings: dict) -> str:
    """Of the resolved engine settings (Config fields), canonical JSON."""
    return sha256_text(json.dumps(settings, sort_keys=True, separators=(",", ":"), default=str))


def files_digest(path: str, chunk: int = 1 << 22) -> str:
    """SHA-256 over a model file, or over a folder's files (sorted by name, each name then its bytes)."""
    h = hashlib.sha256()
    files = (
        [path]
        if os.path.isfile(path)
        else sorted(os.path.join(path, n) for n in os.listdir(path) if os.path.isfile(os.path.join(path, n)))
    )
    for file in files:
        if len(files) > 1:
            h.update(os.path.basename(file).encode() + b"\0")
        with open(file, "rb") as f:
            while block := f.read(chunk):
                h.update(block)
    return h.hexdigest()


class AuditLog:
    """Appends chained records (server/audit_chain.py). Rotates by size (`max_bytes`: the full file becomes
    PATH.1, PATH.2, ... and a new PATH starts, the chain going on) and re-opens its file on SIGHUP
    (`reopen`), for an external logrotate. A restart picks the chain up from the last line written."""

    def __init__(self, path: str, content: bool = False, max_bytes: int | None = None):
        self.path, self.content, self.max_bytes = path, content, max_bytes
        self._lock = threading.RLock()  # SIGHUP's handler may run on the thread already holding it
        try:
            self._prev = last_hash(path)
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held for the server's life
            self._size = os.path.getsize(path)
        except (OSError, ValueError) as e:
            why = e.strerror if isinstance(e, OSError) else f"its last line is not an audit record: {e}"
            raise ConfigError(f"cannot open the audit log {path} ({why}); give a writable --audit-log path") from None

    def write(self, record: dict) -> None:
        record = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")} | record
        with self._lock:
            line, self._prev = chained_line(record, self._prev)
            size = len(line.encode("utf-8"))
            if self.max_bytes and self._size > 0 and self._size + size > self.max_bytes:
                self._rotate()
            self._file.write(line)
            self._file.flush()
            self._size += size

    def _rotate(self) -> None:
        self._file.close()
        taken = rotated_files(self.path)
        number = 1 + (int(taken[-1].rsplit(".", 1)[1]) if taken else 0)
        os.replace(self.path, f"{self.path}.{number}")
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._size = 0

    def reopen(self) -> None:
        with self._lock:
            self._file.close()
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._size = os.path.getsize(self.path)

    def close(self) -> None:
        with self._lock:
            self._file.close()


def refused_record(state, request, request_id: str, endpoint: str, status: int, code: str | None) -> dict:
    """The record of a request refused before it reached the engine (401, 400, 413, 429, 503)."""
    identity = getattr(request.state, "identity", None)
    return {
        "request_id": request_id,
        "key": None if identity is None else identity.name,  # None: refused before its key was known
        "client": request.client.host if request.client else None,
        "endpoint": endpoint,
        "model": getattr(state, "model_name", None),
        "model_sha256": state.model_sha256,
        "deployment_profile": state.settings.deployment_profile,
        "settings_sha256": state.settings.settings_sha256,
        "status": status,
        "outcome": code or "refused",
    }


def audit_record(run, status: int, outcome: str, done: list) -> dict:
    """The record of one API request (`run`: server/generation.Run), written when it ends."""
    state, settings = run.state, run.state.settings
    outputs = [None if f is None else f.outputs[0].text for f in run.finals]
    record = {
        "request_id": run.request_id,
        "key": run.identity.name,
        "client": run.client,
        "endpoint": run.endpoint,
        "model": getattr(state, "model_name", None),
        "model_sha256": state.model_sha256,
        "deployment_profile": settings.deployment_profile,
        "settings_sha256": settings.settings_sha256,
        "status": status,
        "outcome": outcome,
        "n": run.n,
        "prompt_tokens": run.prompt_tokens,
        "completion_tokens": sum(len(f.outputs[0].token_ids) for f in done),
        "finish_reasons": [None if f is None else f.outputs[0].finish_reason for f in run.finals],
        "ttft_s": None if run._ttft is None else round(run._ttft, 4),
        "total_s": round(time.time() - run.arrival, 4),
        "prompt_sha256": [prompt_digest(p) for p in run.prompts],
        "output_sha256": [None if t is None else sha256_text(t) for t in outputs],
    }
    if state.audit.content:  # the operator opted in: the text itself, which may hold patient data
        record["prompt_text"] = [state.tokenizer.decode(p) for p in run.prompts]
        record["output_text"] = outputs
    return record
