"""`medvllm keys new --name NAME`: a fresh API key, printed once, and the keys-file entry that admits it.

The entry holds the key's SHA-256 only; the key itself is shown here and nowhere else, so hand it to the
client now. Limits may be added to the entry (server/keys.py lists them).
"""

from __future__ import annotations

import argparse
import json


def register(commands, common) -> None:
    p = commands.add_parser("keys", help="make API keys for a keys file", parents=[common])
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    new = actions.add_parser("new", parents=[common], help="print a new key and its keys-file entry")
    new.add_argument("--name", required=True, help="who the key is for (a ward, an application)")
    new.add_argument("--requests-per-minute", type=int, metavar="N")
    new.add_argument("--tokens-per-minute", type=int, metavar="N")
    new.add_argument("--max-concurrent", type=int, metavar="N")
    new.add_argument("--priority", type=int, metavar="N", help="default priority of this key's requests")
    new.set_defaults(run=run_new)


def run_new(args: argparse.Namespace) -> int:
    from medvllm.server.keys import new_entry, parse_keys

    key, entry = new_entry(args.name)
    for field in ("requests_per_minute", "tokens_per_minute", "max_concurrent", "priority"):
        if getattr(args, field) is not None:
            entry[field] = getattr(args, field)
    parse_keys(json.dumps({"keys": [entry]}), "(the new entry)")  # the same checks the server makes
    print(f"key (give it to {args.name}; it is not stored anywhere): {key}")
    print('keys-file entry (add it to the file\'s "keys" list):')
    print(json.dumps(entry))
    return 0
