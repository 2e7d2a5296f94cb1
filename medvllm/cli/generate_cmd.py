"""`medvllm inference generate`: resolve the settings, load the model, stream the reply to stdout."""

from __future__ import annotations

import argparse
import os
import sys
import time

from medvllm.chat_template import has_chat_template
from medvllm.cli import output
from medvllm.cli.settings_flags import add_setting_flags, overrides_from
from medvllm.errors import RequestError


def register(actions, common) -> None:
    p = actions.add_parser(
        "generate",
        parents=[common],
        help="generate a reply to one prompt",
        description="Generate text. The prompt comes from --text, --input FILE, or stdin.",
    )
    p.add_argument("--model", help="a .gguf file or Hugging Face model folder (default: the embedded model)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--text", help="the prompt")
    src.add_argument("--input", metavar="FILE", help="read the prompt from FILE ('-' for stdin)")
    p.add_argument(
        "--deployment-profile",
        metavar="NAME|PATH|none",
        help="profile to apply under the explicit flags (default: $MEDVLLM_DEPLOYMENT_PROFILE, "
        "else auto-selected; 'none' turns profiles off)",
    )
    chat = p.add_argument_group("chat")
    chat.add_argument("--system", help="system message (chat models)")
    chat.add_argument(
        "--no-chat", dest="chat", action="store_false", help="send the text as is, without the model's chat template"
    )
    sampling = p.add_argument_group("sampling")
    sampling.add_argument("--max-tokens", type=int, default=256, help="most tokens to generate (default 256)")
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--top-k", type=int, default=-1)
    sampling.add_argument("--seed", type=int, help="random seed (also the engine's seed)")
    sampling.add_argument("--stop", action="append", metavar="TEXT", help="stop at TEXT (repeatable)")
    structured = p.add_argument_group("structured output (one of)").add_mutually_exclusive_group()
    structured.add_argument("--json-schema", metavar="FILE", help="the reply is JSON valid under this JSON Schema")
    structured.add_argument("--regex", metavar="RE", help="the reply matches this regular expression")
    structured.add_argument("--choice", action="append", metavar="TEXT", help="the reply is one of these (repeatable)")
    structured.add_argument("--grammar", metavar="FILE", help="the reply follows this Lark (or GBNF) grammar")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object (text, counts, timings, profile, settings and their sources)",
    )
    add_setting_flags(p)
    p.set_defaults(run=run_generate)


def read_prompt(args) -> str:
    if args.text is not None:
        text = args.text
    elif args.input is not None and args.input != "-":
        try:
            with open(args.input, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise RequestError(f"cannot read --input {args.input!r}: {e.strerror}") from None
    elif args.input == "-" or not sys.stdin.isatty():
        text = sys.stdin.read()
    else:
        raise RequestError("no prompt: pass --text TEXT, --input FILE, or pipe the text on stdin")
    if not text.strip():
        raise RequestError("the prompt is empty: give some text")
    return text


def run_generate(args: argparse.Namespace) -> int:
    from medvllm import LLM, SamplingParams
    from medvllm.deployment import resolve
    from medvllm.deployment.model_info import model_info_for
    from medvllm.hardware import detect

    prompt = read_prompt(args)
    params = SamplingParams(
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        seed=args.seed,
        max_tokens=args.max_tokens,
        stop=args.stop,
        structured_outputs=structured_outputs(args),
    )
    resolution = resolve(
        overrides_from(args), args.deployment_profile, os.environ, detect(), model_info_for(args.model)
    )
    for message in resolution.warnings:
        output.warn(message)
    output.info(args, describe_choice(resolution))
    with output.step(args, "Loading model"):
        llm = LLM(config=resolution.config)
    prompt_ids, used_chat = encode(llm, prompt, args)
    started = time.time()
    final = None
    for out in llm.stream(prompt_ids, params):
        if not args.json and out.outputs[0].delta_text:
            sys.stdout.write(out.outputs[0].delta_text)
            sys.stdout.flush()
        final = out
    if args.json:
        output.print_json(report(llm, resolution, final, params, used_chat, started))
    else:
        sys.stdout.write("\n")
        sys.stdout.flush()
    return 0


def structured_outputs(args):
    """The constraint the flags ask for, or None; a file that cannot be read is a RequestError naming it."""
    from medvllm.structured import StructuredOutputsParams

    if args.json_schema is not None:
        return StructuredOutputsParams(json=_read(args.json_schema, "--json-schema"))
    if args.grammar is not None:
        return StructuredOutputsParams(grammar=_read(args.grammar, "--grammar"))
    if args.regex is not None:
        return StructuredOutputsParams(regex=args.regex)
    if args.choice:
        return StructuredOutputsParams(choice=args.choice)
    return None


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise RequestError(f"cannot read {flag} {path!r}: {e.strerror}") from None


def describe_choice(resolution) -> str:
    name, how = resolution.profile_name, resolution.how_chosen
    if name is None:
        if how == "none":
            return "deployment profile: none (turned off)"
        return "deployment profile: none (no profile runs here; `medvllm profiles select --explain` says why)"
    said = {"flag": "from --deployment-profile", "env": "from MEDVLLM_DEPLOYMENT_PROFILE", "auto": "auto-selected"}[how]
    return f"deployment profile: {name} ({said})"


def encode(llm, prompt: str, args) -> tuple[list[int], bool]:
    tokenizer = llm.tokenizer
    if args.chat and has_chat_template(tokenizer):
        messages = [{"role": "system", "content": args.system}] if args.system else []
        messages.append({"role": "user", "content": prompt})
        return llm.encode_chat(messages), True
    if args.chat:  # asked for a chat turn, but the model has no template to make one
        output.warn("the model has no chat template: the prompt is sent as raw text (--no-chat says so outright)")
    if args.system:
        output.warn(
            "--system is ignored: " + ("--no-chat is set" if not args.chat else "the model has no chat template")
        )
    return list(tokenizer.encode(prompt)), False


def report(llm, resolution, final, params, used_chat: bool, started: float) -> dict:
    completion, m = final.outputs[0], final.metrics
    total = (m.finished_time - m.arrival_time) if m.finished_time else time.time() - started
    return {
        "text": completion.text,
        "finish_reason": completion.finish_reason,
        "usage": {
            "prompt_tokens": m.num_prompt_tokens,
            "completion_tokens": m.num_generation_tokens,
            "cached_tokens": m.num_cached_tokens,
        },
        "timings": {
            "time_to_first_token_s": m.time_to_first_token,
            "total_s": total,
            "decode_tokens_per_s": getattr(m, "decode_tokens_per_s", None),
        },
        "chat_template": used_chat,
        "sampling": {k: getattr(params, k) for k in ("temperature", "top_p", "top_k", "seed", "max_tokens", "stop")},
        "deployment": resolution.to_dict(),
        "runtime": llm.runtime_info(),
    }
