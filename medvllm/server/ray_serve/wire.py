"""What goes between the ingress and an engine replica: the call, and the items its stream yields.

The call carries token ids (the ingress tokenizes), so a replica never parses HTTP. Its `prompt` is the
first prompt's token ids as one character each, which is what Ray's prefix-cache router reads from a
call: a prefix of that text is exactly a prefix of the tokens (server/ray_serve/routing.py).

A replica's stream starts with one item saying whether the engine took the requests, then one item per
output; errors travel as items too (kind and message), so the ingress re-raises the engine's own
exception types instead of Ray's wrappers.
"""

from __future__ import annotations

from dataclasses import dataclass

from medvllm.sampling_params import SamplingParams

ACCEPTED = "accepted"  # (ACCEPTED, replica id, stats)
OUTPUT = "output"  # (OUTPUT, index in the group, RequestOutput, stats)
REFUSED = "refused"  # (REFUSED, message): the engine's RequestError; nothing runs
STEP_FAILED = "step_failed"  # (STEP_FAILED, message): a step running the request raised
DEAD = "dead"  # (DEAD, message): the replica's engine is not running


@dataclass
class EngineCall:
    requests: list[tuple[list[int], SamplingParams]]
    stream: bool
    request_id: str
    arrival_time: float
    priority: int = 0  # under scheduling_policy='priority', lower is more urgent

    @property
    def prompt(self) -> str:
        """The first prompt's token ids as characters, for prefix routing (one character per token)."""
        return "".join(map(chr, self.requests[0][0])) if self.requests else ""
