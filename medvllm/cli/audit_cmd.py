"""`medvllm audit verify FILE [FILE ...]`: checks an audit trail's hash chain, oldest file first.

Without more files than one, PATH's rotated files (PATH.1, PATH.2, ...) are checked first, then PATH.
Exit 0 when the chain holds; 1 with the first broken line named.
"""

from __future__ import annotations

import argparse
import os


def register(commands, common) -> None:
    p = commands.add_parser("audit", help="check an audit log's hash chain", parents=[common])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    v = actions.add_parser("verify", parents=[common], help="verify the chain; report the first broken line")
    v.add_argument(
        "files", nargs="+", metavar="FILE", help="the audit log (its rotated files are found), or files in order"
    )
    v.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> int:
    from medvllm.errors import ConfigError
    from medvllm.server.audit_chain import GENESIS, rotated_files, verify

    files = rotated_files(args.files[0]) + args.files if len(args.files) == 1 else list(args.files)
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ConfigError(f"audit file {missing[0]} does not exist: give the --audit-log path the server wrote")
    verdict = verify(files)
    if verdict.broken:
        print(f"BROKEN after {verdict.lines - 1} good lines: {verdict.broken}")
        return 1
    start = "from its first line" if verdict.starts_after == GENESIS else f"continuing after {verdict.starts_after}"
    print(f"OK: {verdict.lines} lines in {len(files)} file(s), chain intact ({start})")
    return 0
