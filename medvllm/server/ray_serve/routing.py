"""Prefix-aware routing: Ray's own PrefixCacheAffinityRouter, used as it is.

It keeps a prefix tree of the text each replica was sent (in a small Ray actor) and sends a call to the
replica whose text shares the longest prefix with the call's; below a 10% match it picks the replica
holding the least text, and among equal candidates the one with the shortest queue. It reads the text
from the call's `prompt` attribute: ours is the prompt's token ids, one character each (wire.py), so
matching text is matching tokens, which is what the engine's prefix cache reuses.

Ray exports it as ray.serve.llm.request_router.PrefixCacheAffinityRouter, but that package imports the
`ray[llm]` extra's dependencies (pyarrow, ...); the class itself needs only `ray[serve]`, so without
them it is taken from where Ray defines it.
"""

from __future__ import annotations

try:
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter
except ImportError:
    from ray.llm._internal.serve.routing_policies.prefix_aware.prefix_aware_router import (
        PrefixCacheAffinityRouter,
    )

ROUTER = PrefixCacheAffinityRouter

__all__ = ["ROUTER", "PrefixCacheAffinityRouter"]
