"""top-k / top-p / min-p keep exactly the tokens vLLM's definitions keep, row by row, ties included.

The reference below is the definitions written out in float64 (vLLM's v1 order: min-p on the
temperature-scaled distribution, then top-k, then top-p on what is left). Tokens tied on the same
logit are kept or dropped together: top-k keeps every token tied with the k-th, and top-p keeps a
token when the tokens strictly more likely than it hold less than top_p of the mass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medvllm.layers.sampler import Sampler, SamplingBatch

V = 48
ROWS = 400


def reference_keep(logits: np.ndarray, top_k: int, top_p: float, min_p: float) -> tuple[np.ndarray, float]:
    """Kept tokens of one row, and how close any token came to a threshold (for rounding)."""
    x = logits.astype(np.float64)
    keep = np.ones_like(x, dtype=bool)
    margin = np.inf
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    if min_p > 0:
        cutoff = min_p * probs.max()
        keep &= probs >= cutoff
        margin = min(margin, np.min(np.abs(probs - cutoff) / probs.max()))
    if 0 < top_k < len(x):
        kth = np.sort(x[keep])[::-1][min(top_k, keep.sum()) - 1]
        keep &= x >= kth
    if top_p < 1:
        q = np.where(keep, probs, 0.0)
        q /= q.sum()
        ahead = np.array([q[x > v].sum() for v in x])  # mass strictly more likely than each token
        keep &= ahead < top_p
        margin = min(margin, np.min(np.abs(ahead - top_p)))
    return keep, margin


def _random_rows(seed: int, tied: bool):
    rng = np.random.default_rng(seed)
    if tied:  # few distinct values: ties at every threshold
        logits = rng.integers(0, 6, size=(ROWS, V)).astype(np.float32)
    else:
        logits = (rng.standard_normal((ROWS, V)) * 3).astype(np.float32)
    off = rng.random((ROWS, 3)) < 0.3  # each filter is off in about a third of the rows
    top_k = np.where(off[:, 0], -1, rng.integers(1, V + 1, ROWS))
    top_p = np.where(off[:, 1], 1.0, rng.uniform(0.05, 1.0, ROWS))
    min_p = np.where(off[:, 2], 0.0, rng.uniform(0.0, 0.9, ROWS))
    return logits, top_k, top_p, min_p


def _batch(top_k, top_p, min_p, use=(True, True, True)) -> SamplingBatch:
    n = len(top_k)
    return SamplingBatch(
        temperature=torch.ones(n),
        top_k=torch.tensor([k if k > 0 else V for k in top_k], dtype=torch.long) if use[0] else None,
        top_p=torch.tensor(top_p, dtype=torch.float32) if use[1] else None,
        min_p=torch.tensor(min_p, dtype=torch.float32) if use[2] else None,
        all_greedy=False,
        seeds=[None] * n,
    )


@pytest.mark.parametrize("tied", [False, True], ids=["distinct", "ties"])
@pytest.mark.parametrize(
    "use",
    [(True, True, True), (True, False, False), (False, True, False), (False, False, True), (False, True, True)],
    ids=["all", "top_k", "top_p", "min_p", "top_p+min_p"],
)
def test_kept_set_matches_reference_row_by_row(tied, use):
    logits, top_k, top_p, min_p = _random_rows(7 + tied, tied)
    top_k = top_k if use[0] else np.full(ROWS, -1)
    top_p = top_p if use[1] else np.ones(ROWS)
    min_p = min_p if use[2] else np.zeros(ROWS)
    probs = Sampler._filtered_probs(torch.from_numpy(logits), _batch(top_k, top_p, min_p, use))
    got = (probs > 0).numpy()
    compared = 0
    for row in range(ROWS):
        expected, margin = reference_keep(logits[row], int(top_k[row]), float(top_p[row]), float(min_p[row]))
        if margin < 1e-5:  # float32 rounding may fall either way this close to a threshold
            continue
        compared += 1
        assert got[row].tolist() == expected.tolist(), (
            f"row {row}: top_k={top_k[row]} top_p={top_p[row]:.4f} min_p={min_p[row]:.4f} "
            f"kept {np.flatnonzero(got[row]).tolist()}, expected {np.flatnonzero(expected).tolist()}"
        )
    assert compared > ROWS * 0.95
    # the kept tokens' probabilities are the renormalized scaled distribution
    assert torch.allclose(probs.sum(dim=-1), torch.ones(ROWS), atol=1e-5)


def test_rows_with_every_filter_off_keep_every_token():
    logits = torch.randn(5, V) * 4
    probs = Sampler._filtered_probs(logits, _batch([-1] * 5, [1.0] * 5, [0.0] * 5))
    assert bool((probs > 0).all())
    assert torch.allclose(probs, logits.softmax(dim=-1), atol=1e-6)


def test_draws_stay_inside_the_kept_set():
    logits, top_k, top_p, min_p = _random_rows(11, tied=False)
    batch = _batch(top_k, top_p, min_p)
    keep = torch.from_numpy(
        np.stack([reference_keep(logits[r], int(top_k[r]), float(top_p[r]), float(min_p[r]))[0] for r in range(ROWS)])
    )
    sampler = Sampler(torch.Generator().manual_seed(0))
    for _ in range(20):
        tokens, _ = sampler(torch.from_numpy(logits), batch)
        assert bool(keep[torch.arange(ROWS), tokens].all())
