"""Output helpers: JSON to stdout, and progress on stderr only when it is a terminal and not --quiet."""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager


def print_json(data) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def info(args, message: str) -> None:
    """An informational line on stderr (not with --quiet)."""
    if not args.quiet:
        print(f"medvllm: {message}", file=sys.stderr)


def warn(message: str) -> None:
    print(f"medvllm: warning: {message}", file=sys.stderr)


def progress_enabled(args) -> bool:
    return not args.quiet and sys.stderr.isatty()


@contextmanager
def step(args, label: str):
    """Show `label...` while a long step runs, then how long it took (terminal only)."""
    if not progress_enabled(args):
        yield
        return
    start = time.perf_counter()
    sys.stderr.write(f"{label}...")
    sys.stderr.flush()
    try:
        yield
    except BaseException:
        sys.stderr.write(" failed\n")
        raise
    sys.stderr.write(f" done ({time.perf_counter() - start:.1f}s)\n")
