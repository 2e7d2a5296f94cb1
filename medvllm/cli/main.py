"""`medvllm`: parse the command line, run one command, print errors as one line.

Generated text and command results go to stdout; progress, warnings and errors go to stderr.
Errors print one line and exit 1 (2 for bad usage); `--verbose` adds the traceback.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from medvllm.errors import MedVLLMError


def common_flags() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="on error, show the traceback too"
    )
    parent.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=argparse.SUPPRESS,
        help="no progress or informational lines on stderr",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    from medvllm.cli import audit_cmd, generate_cmd, keys_cmd, profiles_cmd, quality, serve

    common = common_flags()
    parser = argparse.ArgumentParser(
        prog="medvllm", parents=[common], description="Med-vLLM: LLM inference for medical models on CPU and GPU."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    inference = commands.add_parser("inference", help="generate text", parents=[common])
    generate_cmd.register(inference.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    prof = commands.add_parser("profiles", help="list, show, validate and select deployment profiles", parents=[common])
    profiles_cmd.register(prof.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    serve.register(commands, common)
    keys_cmd.register(commands, common)
    audit_cmd.register(commands, common)
    qual = commands.add_parser("quality", help="check a profile's output quality against a reference", parents=[common])
    quality.register(qual.add_subparsers(dest="action", metavar="ACTION", required=True), common)
    return parser


def _show_engine_warnings() -> None:
    """The engine's own warnings (ConfigWarning: a setting adjusted or without effect) as one
    `medvllm: warning:` line, like the CLI's, instead of Python's file:line form with a source line."""
    from medvllm.cli.output import warn
    from medvllm.config import ConfigWarning

    shown = warnings.showwarning
    if getattr(shown, "medvllm", False):  # already in place (main called again in one process)
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, ConfigWarning):
            warn(" ".join(str(message).split()))
        else:
            shown(message, category, filename, lineno, file, line)

    show.medvllm = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    verbose = "-v" in argv or "--verbose" in argv
    _show_engine_warnings()
    try:
        args = build_parser().parse_args(argv)
        args.verbose = getattr(args, "verbose", False)
        args.quiet = getattr(args, "quiet", False)
        return args.run(args) or 0
    except MedVLLMError as e:
        return _fail(e, verbose)
    except KeyboardInterrupt:
        print("medvllm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except (OSError, ValueError, RuntimeError) as e:  # unexpected: still one line unless --verbose
        return _fail(e, verbose, prefix=f"{type(e).__name__}: ")


def _fail(e: BaseException, verbose: bool, prefix: str = "") -> int:
    if verbose:
        traceback.print_exception(e, file=sys.stderr)
    message = " ".join(str(e).split())  # one line, whatever the message holds
    print(f"medvllm: error: {prefix}{message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
