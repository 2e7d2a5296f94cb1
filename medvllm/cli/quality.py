"""`medvllm quality compare`: does a deployment profile keep the model's output quality?

Runs the clinical text set through a reference (default: the same model, float32, no quantization, no
profile) and through the profile, and gates on KL divergence, top-1 agreement, perplexity change and
greedy-continuation match. Exit status: 0 pass, 3 a threshold crossed, 1 an error (e.g. a profile this
machine cannot run).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace

from medvllm.cli import output
from medvllm.cli.settings_flags import add_setting_flags, overrides_from
from medvllm.quality.gate import RULES, TIERS, tier_of

GATE_FAILED = 3


def register(actions, common) -> None:
    p = actions.add_parser(
        "compare",
        parents=[common],
        help="compare a profile's outputs with a float32 reference",
        description="Teacher-force a clinical text set through a reference and a candidate (a deployment "
        "profile plus any setting flags) and report per-token KL, top-1 agreement, perplexity "
        "change and greedy match. Exits 3 when a threshold is crossed.",
    )
    p.add_argument("--model", help="a .gguf file or Hugging Face model folder (default: the embedded model)")
    p.add_argument(
        "--deployment-profile",
        metavar="NAME|PATH|none",
        help="the candidate's profile, under the setting flags below (default: "
        "$MEDVLLM_DEPLOYMENT_PROFILE, else auto-selected; 'none': Config defaults)",
    )
    p.add_argument(
        "--reference",
        metavar="NAME|PATH|none",
        default="none",
        help="the reference's profile (default: none, i.e. float32 without quantization)",
    )
    p.add_argument(
        "--reference-model",
        metavar="MODEL",
        help="the reference's model, sharing the candidate's tokenizer (default: --model)",
    )
    p.add_argument(
        "--texts", metavar="FILE", help="a JSON-lines text set of {id, kind, text} (default: the shipped clinical set)"
    )
    p.add_argument("--limit", type=int, metavar="N", help="use N texts, taken round-robin across kinds")
    p.add_argument(
        "--greedy-tokens", type=int, default=32, metavar="N", help="greedy continuation length compared (default 32)"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON (default: Markdown)")
    gate = p.add_argument_group(
        "thresholds (crossing one exits 3)",
        "Defaults depend on the candidate's tier: "
        + "; ".join(f"{tier}: " + ", ".join(f"{getattr(t, name):g}" for name in RULES) for tier, t in TIERS.items())
        + " (in the order of the flags below; docs/QUALITY.md explains them).",
    )
    for name, (_, kind, flag, label) in RULES.items():
        gate.add_argument(
            flag, dest=name, type=float, metavar="X", help=f"{'most' if kind == 'max' else 'least'} {label} that passes"
        )
    add_setting_flags(p)
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from medvllm.deployment.model_info import model_info_for
    from medvllm.errors import RequestError
    from medvllm.hardware import detect
    from medvllm.quality import engines, report
    from medvllm.quality.compare import compare
    from medvllm.quality.texts import load_texts, pick, shipped_path

    if args.greedy_tokens < 1:
        raise RequestError(f"--greedy-tokens {args.greedy_tokens} is invalid: it must be at least 1")
    env, hw = os.environ, detect()
    reference_model = args.reference_model or args.model
    # the candidate first: a profile this machine cannot run is refused before anything loads
    cand_res = engines.resolve_side(overrides_from(args), args.deployment_profile, env, hw, model_info_for(args.model))
    ref_res = engines.resolve_side(
        engines.reference_overrides(reference_model), args.reference, env, hw, model_info_for(reference_model)
    )
    items = pick(load_texts(args.texts), args.limit)
    for message in dict.fromkeys(cand_res.warnings + ref_res.warnings):
        output.warn(message)
    cand_label, ref_label = report.describe(cand_res), report.describe(ref_res)
    output.info(args, f"comparing {cand_label} (candidate) with {ref_label} (reference) on {len(items)} texts")
    with output.step(args, "Loading the reference"):
        reference = engines.load(ref_res)
    with reference:  # close() stops tensor-parallel workers, if any
        with output.step(args, "Loading the candidate"):
            candidate = engines.load(cand_res)
        with candidate:
            result = compare(reference, candidate, items, args.greedy_tokens, on_progress=_progress(args))
            tier = tier_of(cand_res.config)
            given = {name: getattr(args, name) for name in RULES if getattr(args, name) is not None}
            thresholds = replace(TIERS[tier], **given)
            text_set = {
                "name": os.path.basename(args.texts) if args.texts else shipped_path().name,
                "path": args.texts or str(shipped_path()),
                "limit": args.limit,
            }
            data = report.build(
                result,
                thresholds,
                report.side(ref_label, ref_res, reference),
                report.side(cand_label, cand_res, candidate),
                text_set,
                args.greedy_tokens,
                tier,
            )
    if args.json:
        output.print_json(data)
    else:
        sys.stdout.write(report.markdown(data))
    if not data["passed"]:
        print("medvllm: quality gate failed: " + "; ".join(data["failures"]), file=sys.stderr)
        return GATE_FAILED
    return 0


def _progress(args):
    if not output.progress_enabled(args):
        return None

    def show(message: str) -> None:
        sys.stderr.write(f"\r{message}...\033[K")
        sys.stderr.flush()
        if message.startswith("greedy"):
            sys.stderr.write("\n")

    return show
