"""`medvllm quality compare` end to end on a tiny random model: report shape, exit codes, refusals."""

import json

import pytest
import torch

from medvllm.cli.main import main
from medvllm.hardware import detect
from medvllm.quality.gate import RULES, TIERS

METRIC_KEYS = {
    "texts",
    "scored_tokens",
    "mean_kl",
    "p99_kl",
    "max_kl",
    "top1_agreement",
    "ppl_reference",
    "ppl_candidate",
    "ppl_delta",
    "greedy_match_rate",
    "greedy_tokens_compared",
    "greedy_exact_texts",
    "greedy_mean_common_prefix",
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny llama folder and a text set in its word-level vocabulary (w0..w255)."""
    from tests.tiny_models import build_tiny

    folder = tmp_path_factory.mktemp("tiny_llama")
    build_tiny("llama", folder)
    gen = torch.Generator().manual_seed(0)
    lines = []
    for i, kind in enumerate(["question", "discharge", "lab"] * 2):
        words = torch.randint(3, 256, (12 + 3 * i,), generator=gen).tolist()
        lines.append(json.dumps({"id": f"t{i}", "kind": kind, "text": " ".join(f"w{w}" for w in words)}))
    texts = folder / "texts.jsonl"
    texts.write_text("\n".join(lines) + "\n")
    return str(folder), str(texts)


def run(capsys, *argv):
    code = main(["quality", "compare", "--quiet", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_identical_profile_passes_with_a_markdown_report(capsys, tiny, monkeypatch):
    monkeypatch.delenv("MEDVLLM_DEPLOYMENT_PROFILE", raising=False)
    folder, texts = tiny
    code, out, err = run(capsys, "--model", folder, "--texts", texts, "--deployment-profile", "none")
    assert code == 0, err
    assert "| mean KL(reference ‖ candidate), nats/token | 0 |" in out
    assert "| top-1 agreement | 100.0% | ≥ 93.0% | pass |" in out and "**PASS**" in out
    assert "Texts: 6 of texts.jsonl" in out


def test_impossible_threshold_exits_3_with_the_json_report(capsys, tiny):
    folder, texts = tiny
    code, out, err = run(
        capsys,
        "--model",
        folder,
        "--texts",
        texts,
        "--deployment-profile",
        "none",
        "--limit",
        "4",
        "--min-top1",
        "1.01",
        "--max-p99-kl",
        "0.25",
        "--json",
    )
    assert code == 3
    assert "quality gate failed: top-1 agreement 1 is below the minimum 1.01 (--min-top1)" in err
    data = json.loads(out)
    assert set(data) == {
        "passed",
        "failures",
        "failed_thresholds",
        "threshold_tier",
        "thresholds",
        "metrics",
        "by_kind",
        "items",
        "reference",
        "candidate",
        "text_set",
        "greedy_tokens",
        "seconds",
    }
    assert data["passed"] is False and data["failed_thresholds"] == ["min_top1_agreement"]
    assert set(data["thresholds"]) == set(RULES) and data["threshold_tier"] == "float"
    assert data["thresholds"] == dict(TIERS["float"].to_dict(), min_top1_agreement=1.01, max_p99_kl=0.25)
    assert set(data["metrics"]) == METRIC_KEYS and data["metrics"]["texts"] == 4
    assert data["metrics"]["mean_kl"] == 0.0 and data["metrics"]["top1_agreement"] == 1.0
    assert sorted(data["by_kind"]) == ["discharge", "lab", "question"]
    assert [row["id"] for row in data["items"]] == ["t0", "t1", "t2", "t3"]
    assert data["text_set"]["limit"] == 4 and data["greedy_tokens"] == 32
    for name in ("reference", "candidate"):
        s = data[name]
        assert s["runtime"]["dtype"] == "float32" and s["deployment"]["profile"] is None
        assert s["deployment"]["settings"]["enable_prefix_caching"] == {"value": False, "source": "quality"}


def test_setting_flags_reach_the_candidate_only(capsys, tiny):
    folder, texts = tiny
    code, out, err = run(
        capsys,
        "--model",
        folder,
        "--texts",
        texts,
        "--deployment-profile",
        "none",
        "--limit",
        "3",
        "--mixed-precision",
        "--mixed-precision-dtype",
        "bf16",
        "--greedy-tokens",
        "8",
        "--json",
    )
    data = json.loads(out)
    assert data["candidate"]["runtime"]["dtype"] == "bfloat16" and data["reference"]["runtime"]["dtype"] == "float32"
    assert data["candidate"]["label"] == "no profile + enable_mixed_precision=True, mixed_precision_dtype=bf16"
    assert data["metrics"]["mean_kl"] > 0 and data["greedy_tokens"] == 8
    assert code == (0 if data["passed"] else 3)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine can run the GPU profile")
def test_a_profile_this_machine_cannot_run_is_refused(capsys):
    code, out, err = run(capsys, "--deployment-profile", "gpu_4bit")
    assert code == 1 and out == ""
    assert err.startswith("medvllm: error: deployment profile 'gpu_4bit' cannot run on this machine")
    assert len(err.strip().splitlines()) == 1


def test_edge_cpu_int8_is_refused_by_an_install_without_dynamic_int8(capsys, monkeypatch):
    import dataclasses

    import medvllm.hardware

    without = dataclasses.replace(detect(), quantization_methods=frozenset())
    monkeypatch.setattr(medvllm.hardware, "detect", lambda: without)
    code, out, err = run(capsys, "--deployment-profile", "edge_cpu_int8")
    assert code == 1 and out == "" and len(err.strip().splitlines()) == 1
    assert "deployment profile 'edge_cpu_int8' cannot run on this machine" in err
    assert "quantization_method='dynamic' is not implemented" in err


def test_bad_text_set_and_limit_are_one_line_errors(capsys, tmp_path):
    missing = tmp_path / "nope.jsonl"
    code, _, err = run(capsys, "--deployment-profile", "none", "--texts", str(missing))
    assert code == 1 and "cannot read the text set" in err and len(err.strip().splitlines()) == 1
    code, _, err = run(capsys, "--deployment-profile", "none", "--limit", "0")
    assert code == 1 and "--limit 0 is invalid" in err
