"""Merges implied by a sentencepiece vocabulary: the same list, in the same order, as transformers'
generate_merges (which the reference tokenizer uses), on random vocabularies full of ties and repeats."""

import random

import pytest
from transformers.tokenization_utils_base import generate_merges as reference

from medvllm.loader import bpe_merges
from medvllm.loader.bpe_merges import generate_merges


def random_vocab(seed: int, size: int, alphabet: str):
    rng = random.Random(seed)
    tokens = list(alphabet)
    while len(tokens) < size:
        if rng.random() < 0.05 and tokens:  # a token listed twice
            tokens.append(rng.choice(tokens))
        else:
            tokens.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))))
    rng.shuffle(tokens)
    scores = [float(rng.randint(-8, 0)) for _ in tokens]  # few values: many ties
    return tokens, scores


def transformers_merges(tokens, scores):
    # what transformers' GGUF converter passes: {token: last index}, and {token: score} (last score wins)
    return reference({t: i for i, t in enumerate(tokens)}, dict(zip(tokens, scores)))


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("alphabet", ["ab▁", "abcdé▁東🚑", "\n \t▁xyz"])
def test_same_merges_as_transformers(seed, alphabet):
    tokens, scores = random_vocab(seed, 400, alphabet)
    assert generate_merges({t: i for i, t in enumerate(tokens)}, scores) == transformers_merges(tokens, scores)


def test_vocabulary_order_as_scores():
    # Gemma: scores are minus the position, so earlier tokens merge first
    tokens, _ = random_vocab(7, 600, "abcd▁")
    positions = list(range(0, -len(tokens), -1))
    ours = generate_merges({t: i for i, t in enumerate(tokens)}, positions)
    assert ours == reference({t: i for i, t in enumerate(tokens)}, {t: -i for i, t in enumerate(tokens)})


@pytest.mark.parametrize("why", ["hash collision", "nan score"])
def test_plain_loop_gives_the_same_list(monkeypatch, why):
    tokens, scores = random_vocab(3, 300, "abc▁é")
    if why == "nan score":
        scores[10] = float("nan")
    else:  # as if two tokens shared a hash: the vectorized path steps aside
        monkeypatch.setattr(bpe_merges._Table, "has_duplicates", True, raising=False)
        original = bpe_merges._Table.__init__

        def init(self, hashes):
            original(self, hashes)
            self.has_duplicates = True

        monkeypatch.setattr(bpe_merges._Table, "__init__", init)
    assert generate_merges({t: i for i, t in enumerate(tokens)}, scores) == transformers_merges(tokens, scores)


def test_tiny_cases():
    assert generate_merges({}, []) == []
    assert generate_merges({"a": 0}, [0.0]) == []
    assert generate_merges({"a": 0, "b": 1, "ab": 2, "ba": 3}, [0, 0, -1, -2]) == [("a", "b"), ("b", "a")]
