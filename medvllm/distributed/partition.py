"""How a model's dimensions are split over tensor-parallel ranks: pure arithmetic, no communication.

Attention heads are split by whole GQA groups (one KV head and the query heads that read it), so a
rank never needs another rank's keys. When there are fewer KV heads than ranks, each KV head is
replicated on tp / num_kv_heads ranks and its query heads are split among them. Splits need not be
equal: 9 heads over 2 ranks is 6 + 3 (SmolLM2-135M), exact, just less balanced.
"""

from __future__ import annotations

from dataclasses import dataclass

from medvllm.errors import ConfigError


def split(total: int, parts: int, rank: int, unit: int = 1) -> tuple[int, int]:
    """(start, size) of rank's share of `total` items cut into `parts` near-equal runs of whole units."""
    units = total // unit
    start = rank * units // parts
    end = (rank + 1) * units // parts
    return start * unit, (end - start) * unit


def split_sizes(total: int, parts: int, unit: int = 1) -> list[int]:
    return [split(total, parts, r, unit)[1] for r in range(parts)]


@dataclass(frozen=True)
class HeadShard:
    """The attention heads one rank computes (indices into the model's heads)."""

    q_start: int
    num_heads: int
    kv_start: int
    num_kv_heads: int


def valid_tp_sizes(num_heads: int, num_kv_heads: int) -> list[int]:
    group = num_heads // num_kv_heads
    return [
        t
        for t in range(1, num_heads + 1)
        if t <= num_kv_heads or (t % num_kv_heads == 0 and group % (t // num_kv_heads) == 0)
    ]


def check_heads(num_heads: int, num_kv_heads: int, tp: int, model: str = "the model") -> None:
    """ConfigError unless `tp` ranks can split these heads without one rank needing another's KV."""
    if tp in valid_tp_sizes(num_heads, num_kv_heads):
        return
    sizes = ", ".join(map(str, valid_tp_sizes(num_heads, num_kv_heads)))
    raise ConfigError(
        f"tensor_parallel_size={tp} cannot split the {num_heads} attention heads ({num_kv_heads} KV heads) "
        f"of {model}: each rank needs whole KV-head groups, or an equal share of one "
        f"replicated KV head's {num_heads // num_kv_heads} query heads; use tensor_parallel_size in {sizes}"
    )


def head_shard(num_heads: int, num_kv_heads: int, tp: int, rank: int) -> HeadShard:
    check_heads(num_heads, num_kv_heads, tp)
    group = num_heads // num_kv_heads
    if tp <= num_kv_heads:
        kv_start, kv = split(num_kv_heads, tp, rank)
        return HeadShard(kv_start * group, kv * group, kv_start, kv)
    replicas = tp // num_kv_heads  # ranks sharing one KV head
    kv_head, part = divmod(rank, replicas)
    per_rank = group // replicas
    return HeadShard(kv_head * group + part * per_rank, per_rank, kv_head, 1)
