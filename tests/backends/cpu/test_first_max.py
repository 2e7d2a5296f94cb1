"""The greedy pick (layers/sampler.first_max, and backends/cpu/argmax.py's native kernel): argmax's answer
from the native kernel and from torch."""

from __future__ import annotations

import torch


def test_first_max_is_argmax_with_ties_nan_and_infinities():
    # the native kernel on CPU float32 rows, max().indices elsewhere: argmax's answer either way
    from medvllm.backends.cpu.argmax import native_first_max

    first_max = native_first_max()

    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 1037, generator=g)  # a width off the 16-lane vectors
    x[1, 700] = x[1, 5] = 50.0  # a tie: the first wins
    x[2, 900], x[2, 20] = float("nan"), float("nan")  # NaN wins, the first of them (torch.max)
    x[3] = float("-inf")
    x[4, 1036] = float("inf")  # in the scalar tail
    x[5, 3] = float("nan")  # NaN in the first vector
    expected = x.max(dim=-1).indices
    assert torch.equal(first_max(x), expected)
    assert torch.equal(first_max(x.double()), x.double().argmax(dim=-1))  # not float32: torch's path
    assert first_max(x).tolist()[1:6] == [5, 20, 0, 1036, 3]
    big = torch.randn(64, 49152, generator=g)
    assert torch.equal(first_max(big), big.argmax(dim=-1))
