"""Quality metrics against direct math; the gate's threshold checks; the shipped clinical text set."""

import json
import math
import types

import numpy as np
import pytest
import torch

from medvllm.errors import RequestError
from medvllm.quality import metrics as M
from medvllm.quality.gate import RULES, TIERS, Thresholds, crossed, tier_of
from medvllm.quality.texts import load_texts, pick, shipped_path


def test_kl_of_known_distributions():
    p, q = [0.5, 0.25, 0.25], [0.25, 0.5, 0.25]
    expected = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))  # = ln(2) / 4
    assert expected == pytest.approx(math.log(2) / 4)
    # logits are log-probabilities up to a per-row constant, which softmax removes
    ref = torch.tensor([p, q]).log() + torch.tensor([[3.0], [-7.0]])
    cand = torch.tensor([q, p]).log()
    kl = M.kl_per_token(ref, cand)
    assert kl.tolist() == pytest.approx([expected, sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))], abs=1e-7)


def test_kl_is_zero_for_identical_and_asymmetric_otherwise():
    torch.manual_seed(0)
    logits = torch.randn(5, 100) * 3
    assert M.kl_per_token(logits, logits.clone()).abs().max().item() == 0.0
    other = logits + torch.randn(5, 100)
    forward, backward = M.kl_per_token(logits, other), M.kl_per_token(other, logits)
    assert (forward > 0).all() and not torch.allclose(forward, backward)


def test_kl_matches_scipy_entropy():
    entropy = pytest.importorskip("scipy.stats").entropy  # KL(p || q) when given two distributions
    torch.manual_seed(1)
    ref, cand = torch.randn(3, 50), torch.randn(3, 50)
    p, q = torch.softmax(ref.double(), -1).numpy(), torch.softmax(cand.double(), -1).numpy()
    assert M.kl_per_token(ref, cand).tolist() == pytest.approx([entropy(p[i], q[i]) for i in range(3)], rel=1e-6)


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    vocab = 49152
    logits = torch.zeros(7, vocab)
    targets = torch.tensor([0, 5, 17, 49151, 3, 3, 100])
    assert M.perplexity(M.token_nll(logits, targets)) == pytest.approx(vocab, rel=1e-9)


def test_token_nll_and_perplexity_against_direct_math():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    targets = torch.tensor([1, 2])
    nll = M.token_nll(probs.log(), targets)
    assert nll.tolist() == pytest.approx([-math.log(0.2), -math.log(0.8)])
    assert M.perplexity(nll) == pytest.approx(math.exp((-math.log(0.2) - math.log(0.8)) / 2))
    assert M.relative_change(10.0, 10.5) == pytest.approx(0.05)


def test_top1_agreement():
    ref = torch.tensor([[1.0, 2.0, 0.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    cand = torch.tensor([[0.0, 9.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.5, 1.0]])
    assert M.top1_agrees(ref, cand).tolist() == [True, False, True]


def test_percentile_matches_numpy():
    values = torch.tensor([0.3, 0.01, 5.0, 0.2, 0.07, 0.0, 1.5, 0.9, 0.4, 0.11, 2.2])
    for q in (50, 90, 99):
        assert M.percentile(values, q) == pytest.approx(float(np.percentile(values.numpy(), q)))


@pytest.mark.parametrize(
    "ref, cand, n, expected",
    [
        ([1, 2, 3, 4], [1, 2, 3, 4], 32, (4, 4)),  # identical
        ([1, 2, 3, 4], [1, 9, 3, 4], 32, (3, 4)),  # token by token, not prefix only
        ([1, 2, 3], [1, 2, 3, 7, 8], 32, (3, 5)),  # the reference stopped early (EOS); the rest counts as misses
        ([5, 6, 7, 8], [5, 6, 0, 0], 2, (2, 2)),  # only the first n tokens count
    ],
)
def test_greedy_matches(ref, cand, n, expected):
    assert M.greedy_matches(ref, cand, n) == expected


def test_common_prefix():
    assert M.common_prefix([1, 2, 3, 4], [1, 2, 9, 4]) == 2
    assert M.common_prefix([1, 2], [1, 2, 3]) == 2
    assert M.common_prefix([7], [8]) == 0


def _passing_metrics() -> dict:
    return {"mean_kl": 0.001, "p99_kl": 0.01, "top1_agreement": 0.97, "ppl_delta": 0.001, "greedy_match_rate": 0.9}


def test_gate_passes_inside_and_names_each_crossed_threshold():
    assert crossed(_passing_metrics(), Thresholds()) == {}
    bad = {"mean_kl": 0.2, "p99_kl": 3.0, "top1_agreement": 0.5, "ppl_delta": 0.3, "greedy_match_rate": 0.1}
    for name, (key, _, flag, _) in RULES.items():
        metrics = dict(_passing_metrics(), **{key: bad[key]})
        failures = crossed(metrics, Thresholds())
        assert list(failures) == [name] and flag in failures[name]


def test_gate_limits_are_inclusive_and_overridable():
    t = Thresholds()
    at_limit = {
        "mean_kl": t.max_mean_kl,
        "p99_kl": t.max_p99_kl,
        "top1_agreement": t.min_top1_agreement,
        "ppl_delta": t.max_ppl_increase,
        "greedy_match_rate": t.min_greedy_match,
    }
    assert crossed(at_limit, t) == {}
    assert list(crossed(_passing_metrics(), Thresholds(min_top1_agreement=1.01))) == ["min_top1_agreement"]
    # a lower perplexity than the reference's is not a failure
    assert crossed(dict(_passing_metrics(), ppl_delta=-0.5), t) == {}


@pytest.mark.parametrize(
    "method, bits, tier",
    [
        (None, None, "float"),
        ("dynamic", 8, "8-bit"),
        ("bnb-8bit", 8, "8-bit"),
        ("bnb-nf4", 4, "4-bit"),
    ],
)
def test_threshold_tier_follows_the_quantization_width(method, bits, tier):
    from medvllm.config import quantization_bits

    assert quantization_bits(method) == bits  # the width a method means
    config = types.SimpleNamespace(quantization_method=method)
    assert tier_of(config) == tier
    assert TIERS["float"] == Thresholds()


def test_tiers_loosen_as_precision_drops():
    order = [TIERS["float"], TIERS["8-bit"], TIERS["4-bit"]]
    for tighter, looser in zip(order, order[1:]):
        for name, (_, kind, _, _) in RULES.items():
            a, b = getattr(tighter, name), getattr(looser, name)
            assert (a < b) if kind == "max" else (a > b), name


def test_shipped_text_set():
    items = load_texts()
    assert len(items) >= 60
    assert len({i.id for i in items}) == len(items)
    kinds = {i.kind for i in items}
    assert {"question", "discharge", "medication", "lab"} <= kinds
    assert all(len(i.text.split()) >= 5 for i in items)
    assert shipped_path().name == "clinical_texts.jsonl"


def test_pick_takes_round_robin_across_kinds():
    items = load_texts()
    kinds = sorted({i.kind for i in items})
    slice_ = pick(items, len(kinds))
    assert sorted(i.kind for i in slice_) == kinds
    assert pick(items, None) == items and pick(items, 10_000) == items
    assert len(pick(items, 9)) == 9
    with pytest.raises(RequestError, match="--limit 0"):
        pick(items, 0)


@pytest.mark.parametrize(
    "content, message",
    [
        ("not json\n", "not valid JSON"),
        (json.dumps({"id": "a", "kind": "lab"}) + "\n", "'text' is missing"),
        ((json.dumps({"id": "a", "kind": "lab", "text": "x y"}) + "\n") * 2, "appears twice"),
        ("\n", "is empty"),
    ],
)
def test_text_set_errors_name_the_line_and_the_fix(tmp_path, content, message):
    path = tmp_path / "set.jsonl"
    path.write_text(content)
    with pytest.raises(RequestError, match=message):
        load_texts(path)
    with pytest.raises(RequestError, match="cannot read the text set"):
        load_texts(tmp_path / "missing.jsonl")


def test_docs_threshold_table_matches_the_code():
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "QUALITY.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(): [cell.strip() for cell in line.split("|")[2:5]]
        for line in doc.splitlines()
        if line.startswith("| `--")
    }
    for name, (_, _, flag, _) in RULES.items():
        key = next(k for k in rows if k.startswith(f"`{flag}`"))
        assert [float(v) for v in rows[key]] == [getattr(TIERS[t], name) for t in ("float", "8-bit", "4-bit")], flag
