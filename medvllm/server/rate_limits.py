"""Per-key limits: requests and tokens per minute (a sliding 60 s window) and requests at once.

A request is charged at admission for what it may use (its prompt tokens + n x max_tokens), and its
charge is lowered to what it used when it ends, so a key's budget reflects real use. Over a limit, the
request gets a 429 in OpenAI's shape with a Retry-After saying when the window has room again.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from medvllm.server.errors import APIError
from medvllm.server.keys import Identity

WINDOW_S = 60.0


def too_many(message: str, kind: str, retry_after_s: float) -> APIError:
    return APIError(
        429,
        message,
        type=kind,  # OpenAI's: "requests" or "tokens"
        code="rate_limit_exceeded",
        headers={"Retry-After": str(max(1, math.ceil(retry_after_s)))},
    )


@dataclass
class Charge:
    """One admitted request's share of its key's window (tokens may be lowered when it ends)."""

    time: float
    tokens: int


@dataclass
class Usage:
    charges: deque = field(default_factory=deque)  # Charge, oldest first
    active: int = 0

    def prune(self, now: float) -> None:
        while self.charges and now - self.charges[0].time >= WINDOW_S:
            self.charges.popleft()


class RateLimits:
    """Runs on the event loop only: no locking."""

    def __init__(self, clock=time.monotonic):
        self._usage: dict[str, Usage] = {}
        self._clock = clock

    def admit(self, who: Identity, tokens: int) -> Charge | None:
        """Charges `tokens` to `who`, or raises a 429 APIError. None when the key has no limits."""
        if who.requests_per_minute is None and who.tokens_per_minute is None and who.max_concurrent is None:
            return None
        now = self._clock()
        u = self._usage.setdefault(who.name, Usage())
        u.prune(now)
        if who.max_concurrent is not None and u.active >= who.max_concurrent:
            raise too_many(
                f"key {who.name!r} has {u.active} requests in flight, its limit (max_concurrent): "
                "retry when one has finished",
                "requests",
                1,
            )
        if who.requests_per_minute is not None and len(u.charges) >= who.requests_per_minute:
            raise too_many(
                f"key {who.name!r} reached its limit of {who.requests_per_minute} requests per minute: "
                "retry after the Retry-After delay",
                "requests",
                WINDOW_S - (now - u.charges[0].time),
            )
        if who.tokens_per_minute is not None:
            if tokens > who.tokens_per_minute:
                raise too_many(
                    f"this request may use {tokens} tokens (prompt + n x max_tokens), more than key {who.name!r} "
                    f"may use in a minute ({who.tokens_per_minute}): lower max_tokens or split the request",
                    "tokens",
                    WINDOW_S,
                )
            used = sum(c.tokens for c in u.charges)
            if used + tokens > who.tokens_per_minute:
                room_at = self._room_at(u, who.tokens_per_minute - tokens)
                raise too_many(
                    f"key {who.name!r} has used {used} of its {who.tokens_per_minute} tokens per minute and this "
                    f"request may use {tokens}: retry after the Retry-After delay",
                    "tokens",
                    room_at - now,
                )
        charge = Charge(now, tokens)
        u.charges.append(charge)
        u.active += 1
        return charge

    def settle(self, who: Identity, charge: Charge | None, used_tokens: int) -> None:
        """The request ended having used `used_tokens`: it no longer counts as in flight."""
        if charge is None:
            return
        u = self._usage[who.name]
        u.active -= 1
        charge.tokens = min(charge.tokens, used_tokens)

    @staticmethod
    def _room_at(u: Usage, allowed: int) -> float:
        """When enough of the window's oldest charges expire to bring the total to `allowed` or less."""
        total, expires = sum(c.tokens for c in u.charges), 0.0
        for c in u.charges:
            if total <= allowed:
                break
            total -= c.tokens
            expires = c.time + WINDOW_S
        return expires
