"""The comparison report: one JSON-able dict, and its Markdown rendering."""

from __future__ import annotations

from medvllm.quality.compare import QualityResult
from medvllm.quality.gate import RULES, Thresholds, crossed


def side(label: str, resolution, llm) -> dict:
    """What ran on one side: its settings (with where each came from) and the runtime's own account."""
    return {"label": label, "deployment": resolution.to_dict(), "runtime": llm.runtime_info()}


def describe(resolution) -> str:
    """`profile X + a=1, b=2`: the profile and the settings given on top of it, in the keys they were given in."""
    name = resolution.profile_name or "no profile"
    given = [f"{k}={v}" for k, v in resolution.given.items() if k != "model"]
    return name + (f" + {', '.join(given)}" if given else "")


def build(
    result: QualityResult,
    thresholds: Thresholds,
    reference: dict,
    candidate: dict,
    text_set: dict,
    greedy_tokens: int,
    tier: str,
) -> dict:
    failures = crossed(result.metrics, thresholds)
    return {
        "passed": not failures,
        "failures": list(failures.values()),
        "failed_thresholds": list(failures),
        "threshold_tier": tier,
        "thresholds": thresholds.to_dict(),
        "metrics": result.metrics,
        "by_kind": result.by_kind,
        "items": result.items,
        "reference": reference,
        "candidate": candidate,
        "text_set": text_set,
        "greedy_tokens": greedy_tokens,
        "seconds": round(result.seconds, 1),
    }


_HEAD_INPUT = {
    "int8-rows": " shared with the LM head (weight-only)",
    "int8-rows-2x8": " shared with the LM head (its input as two int8 parts)",
}


def _numerics(s: dict) -> str:
    rt = s["runtime"]
    quant = rt.get("quantization") or "no quantization"
    if isinstance(quant, dict):  # runtime_info's account: method, kernel, layer counts
        quant = (
            f"{quant.get('method')} on {quant.get('layers')} layers ({quant.get('float_layers')} kept in float)"
            + (", int8 embedding rows" if quant.get("embedding") == "int8-rows" else "")
            + (_HEAD_INPUT.get(rt.get("lm_head"), ""))
        )
    kv = rt.get("kv_cache_dtype")
    cache = f", {kv} KV cache" if kv and kv != rt["dtype"] else ""
    return f"{rt['dtype']}, {quant}{cache}, on {rt['device']}"


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def _threshold(report: dict, name: str) -> str:
    key, kind, _, _ = RULES[name]
    limit = report["thresholds"][name]
    shown = (
        f"{limit:+.0%}"
        if key == "ppl_delta"
        else (_pct(limit) if key in ("top1_agreement", "greedy_match_rate") else f"{limit:g}")
    )
    return ("≤ " if kind == "max" else "≥ ") + shown


def _verdict(report: dict, name: str) -> str:
    return "**fail**" if name in report["failed_thresholds"] else "pass"


def markdown(report: dict) -> str:
    m, ref, cand = report["metrics"], report["reference"], report["candidate"]
    ts = report["text_set"]
    lines = [
        f"### {cand['label']} vs {ref['label']}",
        "",
        f"Model: {cand['runtime']['model']}. Texts: {m['texts']} of {ts['name']} ({m['scored_tokens']} scored "
        f"tokens); greedy continuations of {report['greedy_tokens']} tokens.",
        "",
        "| side | settings | numerics |",
        "|---|---|---|",
        f"| reference | {ref['label']} | {_numerics(ref)} |",
        f"| candidate | {cand['label']} | {_numerics(cand)} |",
        "",
        f"| metric | value | threshold ({report['threshold_tier']} tier) | result |",
        "|---|---:|---:|---|",
        f"| mean KL(reference ‖ candidate), nats/token | {m['mean_kl']:.4g} | {_threshold(report, 'max_mean_kl')} "
        f"| {_verdict(report, 'max_mean_kl')} |",
        f"| p99 KL, nats | {m['p99_kl']:.4g} | {_threshold(report, 'max_p99_kl')} | {_verdict(report, 'max_p99_kl')} |",
        f"| top-1 agreement | {_pct(m['top1_agreement'])} | {_threshold(report, 'min_top1_agreement')} "
        f"| {_verdict(report, 'min_top1_agreement')} |",
        f"| perplexity, reference → candidate | {m['ppl_reference']:.3f} → {m['ppl_candidate']:.3f} "
        f"({m['ppl_delta']:+.2%}) | {_threshold(report, 'max_ppl_increase')} "
        f"| {_verdict(report, 'max_ppl_increase')} |",
        f"| greedy match, first {report['greedy_tokens']} tokens | {_pct(m['greedy_match_rate'])} "
        f"| {_threshold(report, 'min_greedy_match')} | {_verdict(report, 'min_greedy_match')} |",
        f"| identical greedy continuations | {round(m['greedy_exact_texts'] * m['texts'])} of {m['texts']} | | |",
        f"| mean common greedy prefix | {m['greedy_mean_common_prefix']:.1f} tokens | | |",
        "",
        "| kind | texts | tokens | mean KL | p99 KL | top-1 | perplexity ref → cand | greedy match |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind, k in report["by_kind"].items():
        lines.append(
            f"| {kind} | {k['texts']} | {k['scored_tokens']} | {k['mean_kl']:.4g} | {k['p99_kl']:.4g} "
            f"| {_pct(k['top1_agreement'])} | {k['ppl_reference']:.2f} → {k['ppl_candidate']:.2f} "
            f"({k['ppl_delta']:+.1%}) | {_pct(k['greedy_match_rate'])} |"
        )
    lines.append("")
    if report["passed"]:
        lines.append("**PASS**: every metric is within its threshold.")
    else:
        lines.append("**FAIL**: " + "; ".join(report["failures"]) + ".")
    return "\n".join(lines) + "\n"
