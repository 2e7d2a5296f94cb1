"""Scheduling policy: which request goes first, and which one gives way when memory is short.

fcfs (the default) keeps arrival order everywhere: waiting requests are admitted in the order they came,
and a decode step that runs out of blocks preempts the newest running request. priority (vLLM's
meaning: a lower `priority` value is more urgent) orders waiting requests by (priority, arrival), decodes
the most urgent first, preempts the least urgent (the newest among equals) when blocks run out, and lets
a waiting request that does not fit (no free seat or blocks) preempt running requests less urgent than
itself, least urgent first, so that an emergency request behind a queue of long summaries starts now.
"""

from __future__ import annotations

from collections import deque

from medvllm.engine.sequence import Sequence


def urgency(seq: Sequence) -> tuple[int, int]:
    """Sort key: most urgent first, then first come."""
    return seq.priority, seq.arrival


class Policy:
    def __init__(self, name: str):
        self.name = name
        self.by_priority = name == "priority"

    def order_waiting(self, scheduler) -> None:
        if self.by_priority and len(scheduler.waiting) > 1:
            scheduler.waiting = deque(sorted(scheduler.waiting, key=urgency))

    def prompt_order(self, candidates: list[Sequence]) -> list[Sequence]:
        """Prompt work of a step: fcfs continues split prompts, then admits in arrival order."""
        return sorted(candidates, key=urgency) if self.by_priority else candidates

    def decode_order(self, seqs: list[Sequence]) -> list[Sequence]:
        return sorted(seqs, key=urgency) if self.by_priority else seqs

    def victim_for(self, seq: Sequence, running: list[Sequence]) -> Sequence | None:
        """The running request to preempt so that the waiting `seq` fits, or None (fcfs never does)."""
        if not self.by_priority:
            return None
        less_urgent = [s for s in running if s.priority > seq.priority]
        return max(less_urgent, key=urgency, default=None)
