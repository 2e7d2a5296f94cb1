"""Masks against llguidance's own matcher, and the sampler against the masks it is given.

Oracles: a separate llguidance.LLMatcher fed the same tokens (its compute_bitmask), and for the sampler
the unpacked mask itself: every token any sampling mode picks must be allowed."""

from __future__ import annotations

import random

import llguidance
import pytest
import torch

from medvllm.layers.sampler import Sampler, SamplingBatch, apply_token_bitmask, unpack_bitmask
from medvllm.structured import StructuredOutputsParams as SO
from medvllm.structured.masks import MaskBuilder

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "dose": {"type": "number", "minimum": 0, "maximum": 1000},
        "route": {"enum": ["oral", "iv"]},
        "times": {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
    },
    "required": ["name", "dose", "route"],
}
SPECS = [SO(json=SCHEMA), SO(regex=r"[A-Z][a-z]{1,8} \d{1,3} mg"), SO(choice=["oral", "iv", "subcutaneous"])]


class _Seq:
    def __init__(self, prompt_len: int):
        self.token_ids = list(range(prompt_len))
        self.num_prompt_tokens = prompt_len


@pytest.fixture(scope="module")
def grammars(default_llm):
    return default_llm.engine.grammars


def _oracle_bits(matcher, words: int) -> torch.Tensor:
    """The matcher's own mask; llguidance rounds it up to whole words past the vocabulary (all zero there)."""
    bits = torch.frombuffer(bytearray(matcher.compute_bitmask()), dtype=torch.int32)
    assert not bits[words:].any()
    return bits[:words]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.kind)
def test_masks_equal_llguidance_matcher_on_random_walks(grammars, spec):
    builder = MaskBuilder(grammars.vocab_size, threads=1)
    rng = random.Random(0)
    for walk in range(3):
        states = [grammars.state_for(spec) for _ in range(2)]
        seqs = [_Seq(5), _Seq(9)]
        oracles = [llguidance.LLMatcher(grammars.ll_tokenizer, _grammar_of(grammars, spec)) for _ in seqs]
        for _ in range(40):
            index, bits = builder.start([(row, s, q) for row, (s, q) in enumerate(zip(states, seqs))]).result()
            assert index.tolist() == [0, 1]
            for row, oracle in enumerate(oracles):
                assert torch.equal(bits[row], _oracle_bits(oracle, bits.shape[1])), f"walk {walk}, row {row}"
            allowed = unpack_bitmask(bits, grammars.vocab_size)
            if oracles[0].is_stopped() or oracles[1].is_stopped():
                break
            for row, (seq, oracle) in enumerate(zip(seqs, oracles)):  # a random allowed token each
                choices = allowed[row].nonzero().flatten().tolist()
                token = rng.choice(choices)
                assert oracle.consume_token(token)
                seq.token_ids.append(token)


def _grammar_of(grammars, spec):
    from medvllm.structured.compiler import _grammar_text

    return _grammar_text(llguidance, spec)


def test_unpack_bitmask_reads_llguidance_bit_order():
    bits = torch.zeros(2, 3, dtype=torch.int32)
    tokens = [[0, 31, 32, 70], [5, 63, 64]]
    for row, ids in enumerate(tokens):
        for t in ids:
            bits[row, t // 32] |= torch.tensor(1 << (t % 32)).to(torch.int32)
    allowed = unpack_bitmask(bits, 80)
    assert [allowed[r].nonzero().flatten().tolist() for r in range(2)] == tokens


@pytest.mark.parametrize(
    "settings",
    [
        dict(temperature=[0.0, 0.0, 0.0]),
        dict(temperature=[0.8, 1.0, 0.0], seeds=[(1, 0), None, None]),
        dict(temperature=[1.5, 0.7, 1.0], top_k=[5, 50, 1000], top_p=[0.9, 0.5, 1.0], min_p=[0.0, 0.1, 0.0]),
        dict(temperature=[1.0, 0.0, 1.0], penalties=True),
    ],
)
def test_every_sampling_mode_picks_only_allowed_tokens(settings):
    vocab, rows = 1000, 3
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        logits = torch.randn(rows, vocab, generator=g) * 4
        bits = torch.randint(-(2**31), 2**31 - 1, (2, (vocab + 31) // 32), generator=g, dtype=torch.int32)
        bits &= torch.randint(-(2**31), 2**31 - 1, bits.shape, generator=g, dtype=torch.int32)  # sparser
        constrained = torch.tensor([0, 2])
        batch = _batch(settings, rows, vocab, g)
        batch.bitmask_rows, batch.token_bitmask = constrained, bits
        tokens, _ = Sampler(torch.Generator().manual_seed(trial))(logits.clone(), batch)
        allowed = unpack_bitmask(bits, vocab)
        for i, row in enumerate(constrained.tolist()):
            assert allowed[i, tokens[row]], f"row {row} sampled a forbidden token"
        if all(t == 0 for t in settings["temperature"]):  # greedy: the best allowed token exactly
            masked = logits.clone()
            apply_token_bitmask(masked, constrained, bits)
            assert tokens.tolist() == masked.argmax(dim=-1).tolist()


def _batch(settings, rows, vocab, g) -> SamplingBatch:
    temps = settings["temperature"]
    batch = SamplingBatch(
        temperature=torch.tensor(temps),
        top_k=torch.tensor(settings["top_k"]) if "top_k" in settings else None,
        top_p=torch.tensor(settings["top_p"]) if "top_p" in settings else None,
        min_p=torch.tensor(settings["min_p"]) if "min_p" in settings else None,
        all_greedy=all(t == 0 for t in temps),
        seeds=settings.get("seeds", [None] * rows),
    )
    if settings.get("penalties"):
        batch.output_tokens = torch.randint(0, vocab, (rows, 6), generator=g)
        batch.repetition_penalty = torch.tensor([1.3, 1.0, 0.8])
        batch.presence_penalty = torch.tensor([0.5, 0.0, -0.5])
        batch.frequency_penalty = torch.tensor([0.2, 1.0, 0.0])
        batch.prompt_mask = torch.rand(rows, vocab, generator=g) < 0.1
    return batch


@pytest.mark.parametrize("vocab,words", [(1000, 32), (1000, 30), (64, 2)])  # mask wider, narrower, exact
@pytest.mark.parametrize("rows", [[0, 1, 2], [2, 0]])
def test_masks_apply_in_place_as_the_unpacked_bits_say(vocab, words, rows):
    g = torch.Generator().manual_seed(vocab + words)
    logits = torch.randn(3, vocab, generator=g)
    bits = torch.randint(-(2**31), 2**31 - 1, (len(rows), words), generator=g, dtype=torch.int32)
    ours = logits.clone()
    apply_token_bitmask(ours, torch.tensor(rows), bits)
    allowed = torch.zeros(len(rows), vocab, dtype=torch.bool)
    n = min(vocab, words * 32)
    allowed[:, :n] = unpack_bitmask(bits, n)  # tokens beyond the mask's words are forbidden
    expected = logits.clone()
    expected[rows] = expected[rows].masked_fill(~allowed, float("-inf"))
    assert torch.equal(ours, expected)


def test_llguidance_tokenizer_equals_its_transformers_path(grammars):
    """Built from our tokenizer's backend (no transformers import) it is the tokenizer llguidance.hf makes
    from transformers' tokenizer on the same backend."""
    import llguidance.hf
    import transformers

    ours = grammars.ll_tokenizer
    tokenizer = grammars._hf_tokenizer
    hf = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer.backend_tokenizer, **tokenizer.special_tokens_map
    )
    theirs = llguidance.hf.from_tokenizer(hf, n_vocab=grammars.vocab_size, eos_token=grammars.eos_token_ids or None)
    assert (ours.vocab_size, ours.eos_tokens) == (theirs.vocab_size, theirs.eos_tokens)
    ids = list(range(ours.vocab_size))
    assert [ours.decode_bytes([i]) for i in ids] == [theirs.decode_bytes([i]) for i in ids]
    assert [ours.is_special_token(i) for i in ids] == [theirs.is_special_token(i) for i in ids]
    for text in ("Patient: 67 y, HbA1c 8.2%", '{"dose": 500, "route": "oral"}', "  naïve 東京 <|im_end|>"):
        assert ours.tokenize_str(text) == theirs.tokenize_str(text)
