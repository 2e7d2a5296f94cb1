"""`medvllm profiles list | show | validate | select`."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

from medvllm.cli import output
from medvllm.config import check_fields
from medvllm.deployment import check, merge, profiles, select, translate
from medvllm.errors import ConfigError, ProfileError
from medvllm.hardware import HardwareInfo, detect


def register(actions, common) -> None:
    p = actions.add_parser("list", parents=[common], help="every available profile and whether it runs here")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_list)
    p = actions.add_parser("show", parents=[common], help="one profile's settings, by name or path")
    p.add_argument("profile", metavar="NAME|PATH")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(run=run_show)
    p = actions.add_parser("validate", parents=[common], help="check profile files against the schema and Config")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--strict", action="store_true", help="treat warnings (unknown keys) as failures")
    p.set_defaults(run=run_validate)
    p = actions.add_parser("select", parents=[common], help="what auto-selection picks on this machine")
    p.add_argument("--explain", action="store_true", help="show each candidate and every profile's verdict")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--model", help="check that this model fits (memory estimate); default: the embedded model")
    p.add_argument(
        "--hardware",
        metavar="FILE",
        help="decide for the machine described in FILE (the 'hardware' "
        "object of `profiles select --json`) instead of this one",
    )
    p.set_defaults(run=run_select)


def _hardware(args) -> HardwareInfo:
    if not getattr(args, "hardware", None):
        return detect()
    try:
        data = json.loads(Path(args.hardware).read_text(encoding="utf-8"))
        return HardwareInfo.from_dict(data.get("hardware", data))
    except (OSError, ValueError, TypeError, AttributeError) as e:
        raise ProfileError(f"cannot read hardware description {args.hardware!r}: {e}") from None


def _engine_text(engine: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in engine.items()) or "(no settings)"


def run_list(args) -> int:
    env, hw = os.environ, detect()
    rows = []
    for item in profiles.load_all(env):
        if isinstance(item, ProfileError):
            rows.append({"name": item.profile_name, "error": str(item), "runnable": False, "reasons": [str(item)]})
            continue
        verdict = check(item, hw)
        rows.append(dict(item.to_dict(), runnable=verdict.runnable, reasons=verdict.reasons))
    if args.json:
        output.print_json(rows)
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        mark = "runs here" if r["runnable"] else "not here"
        detail = r.get("description") or r.get("error", "")
        origin = f" [{r['origin']}]" if r.get("origin", "shipped") != "shipped" else ""
        print(f"{r['name']:<{width}}  {r.get('category') or '-':<6}  {mark:<9}  {detail}{origin}")
    return 0


def run_show(args) -> int:
    env, hw = os.environ, detect()
    profile = profiles.load(args.profile, env)
    verdict = check(profile, hw)
    if args.json:
        output.print_json(dict(profile.to_dict(), runnable=verdict.runnable, reasons=verdict.reasons))
        return 0
    print(f"name:        {profile.name}\npath:        {profile.path} ({profile.origin})")
    print(f"category:    {profile.category or '-'}\ndescription: {profile.description or '-'}\nengine:")
    for key, value in profile.engine.items():
        print(f"  {key}: {json.dumps(value)}")
    if profile.ignored:
        print(f"ignored:     {', '.join(profile.ignored)}")
    print(f"this machine: {'runs here' if verdict.runnable else 'cannot run here'}: {'; '.join(verdict.reasons)}")
    return 0


def run_validate(args) -> int:
    failed = 0
    for path in args.paths:
        try:
            profile = profiles.load(path if profiles.is_path_like(path) else f"./{path}", {})
            values, _ = merge.merge(profile.engine, "profile", {}, HardwareInfo())
            check_fields(types.SimpleNamespace(**translate.fields(values)))  # rules that hold on any machine
            problems = profile.warnings if args.strict else []
        except (ProfileError, ConfigError) as e:
            problems = [str(e)]
        if problems:
            failed += 1
            print(f"FAIL {path}: {'; '.join(problems)}")
        else:
            notes = f" (warning: {'; '.join(profile.warnings)})" if profile.warnings else ""
            print(f"ok   {path}{notes}")
    if failed and not args.quiet:
        print(f"{failed} of {len(args.paths)} profile(s) invalid", file=sys.stderr)
    return 1 if failed else 0


def run_select(args) -> int:
    from medvllm.deployment.model_info import model_info_for

    env, hw = os.environ, _hardware(args)
    model = model_info_for(args.model)
    selection = select(hw, env, model)
    name = selection.profile.name if selection.profile else None
    verdicts = []
    for item in profiles.load_all(env):
        if isinstance(item, ProfileError):
            verdicts.append({"name": item.profile_name, "runnable": False, "reasons": [str(item)]})
        else:
            v = check(item, hw, model)
            verdicts.append({"name": item.name, "runnable": v.runnable, "reasons": v.reasons})
    if args.json:
        output.print_json(
            {
                "selected": name,
                "reasons": selection.reasons,
                "hardware": hw.to_dict(),
                "model": model.__dict__ if model else None,
                "profiles": verdicts,
            }
        )
        return 0
    print(name or "none")
    if args.explain:
        print(f"\nhardware: {hw.summary()}")
        print(
            f"model:    {model.name} ({model.num_params / 1e9:.2f}B parameters)"
            if model
            else "model:    unknown (memory not checked)"
        )
        print("\nauto-selection, in order:")
        for line in selection.reasons:
            print(f"  {line}")
        print("\nevery profile on this machine:")
        width = max(len(v["name"]) for v in verdicts)
        for v in verdicts:
            print(f"  {v['name']:<{width}}  {'runs here' if v['runnable'] else 'not here '}  {'; '.join(v['reasons'])}")
    return 0
