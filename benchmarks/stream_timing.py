"""Timing one streamed request against any OpenAI-compatible server: when each token arrived.

serve_load.py builds its figures from these: time to first token, and inter-token latency (the gaps
between a stream's successive tokens: what a reader sees as a stall) pooled over every stream of a run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

# A clinical note to repeat into long prompts: plain prose, as a discharge summary arrives
NOTE = (
    "Patient is a 67-year-old man admitted with community-acquired pneumonia of the right lower lobe, "
    "treated with ceftriaxone and azithromycin, with a history of type 2 diabetes on metformin, "
    "hypertension on lisinopril and chronic kidney disease stage 3; creatinine peaked at 1.9 mg/dL and "
    "returned to his baseline of 1.4 before discharge. "
)


def long_prompt(words: int, index: int) -> str:
    """About `words` words of notes (numbered, so prompts differ and no prefix cache serves them)."""
    per = len(NOTE.split())
    parts = [f"Note {index}.{i}: {NOTE}" for i in range(max(1, words // per))]
    return "".join(parts) + "\nSummarize the notes above for the discharge letter."


@dataclass
class Timed:
    started: float  # perf_counter when the request was sent
    token_times: list[float] = field(default_factory=list)  # perf_counter of each chunk with text
    prompt_tokens: int | None = None
    output_tokens: int = 0

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.started if self.token_times else None

    @property
    def gaps(self) -> list[float]:
        t = self.token_times
        return [b - a for a, b in zip(t, t[1:])]


async def timed_request(client, model: str, prompt: str, max_tokens: int, chat: bool, extra: dict | None = None):
    """Streams one greedy request; returns its Timed record."""
    record = Timed(time.perf_counter())
    common = dict(
        model=model,
        max_tokens=max_tokens,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=extra or None,
    )
    if chat:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt}], **common)
    else:
        stream = await client.completions.create(prompt=prompt, **common)
    async for chunk in stream:
        if chunk.choices:
            c = chunk.choices[0]
            if c.delta.content if chat else c.text:
                record.token_times.append(time.perf_counter())
        if chunk.usage is not None:
            record.output_tokens = chunk.usage.completion_tokens
            record.prompt_tokens = chunk.usage.prompt_tokens
    return record


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rounded(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def itl_figures(records: list[Timed]) -> dict:
    """Inter-token latency over every stream's gaps: p50, p99, max (seconds) and p99 and max per p50."""
    gaps = [g for r in records for g in r.gaps]
    p50, p99, top = percentile(gaps, 50), percentile(gaps, 99), max(gaps, default=None)
    return {
        "itl_p50_s": rounded(p50, 4),
        "itl_p99_s": rounded(p99, 4),
        "itl_max_s": rounded(top, 4),
        "itl_p99_per_p50": rounded(p99 / p50, 2) if p50 else None,
        "itl_max_per_p50": rounded(top / p50, 2) if p50 else None,
        "itl_samples": len(gaps),
    }
