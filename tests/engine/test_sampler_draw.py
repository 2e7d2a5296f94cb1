"""The sampler's draw: one uniform per row inverted through the row's cumulative distribution."""

import numpy as np
import pytest
import torch

from medvllm.layers.sampler import inverse_cdf, seeded_uniform


@pytest.mark.parametrize("vocab", [7, 256, 1000, 49152 + 3])
def test_draw_frequencies_follow_the_probabilities(vocab):
    gen = torch.Generator().manual_seed(vocab)
    logits = torch.randn(1, vocab, generator=gen) * 2
    logits[0, torch.randperm(vocab, generator=gen)[: vocab // 3]] = float("-inf")  # filtered tokens
    probs = logits.softmax(dim=-1)
    draws = 40000
    u = torch.rand(draws, generator=gen, dtype=torch.float64)
    tokens = inverse_cdf(probs.expand(draws, vocab), u)
    counts = np.bincount(tokens.numpy(), minlength=vocab)
    p = probs[0].double().numpy()
    assert counts[p == 0].sum() == 0
    # contiguous groups of tokens (so draws crossing the walk's blocks are checked too): each group's
    # count within 5 standard deviations of its binomial expectation
    groups = np.array_split(np.arange(vocab), min(vocab, 50))
    observed = np.array([counts[g].sum() for g in groups])
    q = np.array([p[g].sum() for g in groups])
    expected, sd = draws * q, np.sqrt(draws * q * (1 - q))
    assert np.all(np.abs(observed - expected) <= 5 * sd + 1)


def test_extreme_uniforms_never_pick_a_zero_probability_token():
    probs = torch.zeros(4, 600)
    probs[:, 5] = 0.25
    probs[:, 300] = 0.5
    probs[:, 520] = 0.25  # tokens 521.. (and the padding of the last block) have probability 0
    u = torch.tensor([0.0, 0.25, 0.75, 1 - 2**-53], dtype=torch.float64)
    assert inverse_cdf(probs, u).tolist() == [5, 300, 520, 520]


def test_a_row_that_keeps_one_token_always_draws_it():
    probs = torch.zeros(3, 1000)
    probs[0, 0], probs[1, 999], probs[2, 511] = 1.0, 1.0, 1.0
    for u in (0.0, 0.5, 1 - 2**-53):
        assert inverse_cdf(probs, torch.full((3,), u, dtype=torch.float64)).tolist() == [0, 999, 511]


def test_seeded_uniforms_depend_only_on_seed_and_position_and_are_uniform():
    assert seeded_uniform(7, 3) == seeded_uniform(7, 3)
    assert seeded_uniform(7, 3) != seeded_uniform(7, 4) and seeded_uniform(7, 3) != seeded_uniform(8, 3)
    values = np.array([seeded_uniform(seed, pos) for seed in range(50) for pos in range(400)])
    assert values.min() >= 0 and values.max() < 1
    histogram = np.bincount((values * 20).astype(int), minlength=20)
    assert np.all(np.abs(histogram - len(values) / 20) <= 5 * np.sqrt(len(values) / 20))
