"""One log line per request: id, endpoint, status, token counts, timings. Never text, unless asked.

Prompts and completions may hold patient data, so they reach the log only when the operator starts the
server with --log-content; then a second line carries them, JSON-quoted, under the same request id.
"""

from __future__ import annotations

import json
import logging

log = logging.getLogger("medvllm.server")


def log_request(request_id: str, endpoint: str, status: int, **fields) -> None:
    parts = [f"request_id={request_id}", f"endpoint={endpoint}", f"status={status}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    log.info(" ".join(parts))


def log_content(request_id: str, prompt, completion) -> None:
    """Only called when the operator passed --log-content."""
    log.info(
        "request_id=%s content prompt=%s completion=%s",
        request_id,
        json.dumps(prompt, ensure_ascii=False),
        json.dumps(completion, ensure_ascii=False),
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)
