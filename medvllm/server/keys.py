"""API keys with names and limits, stored as SHA-256 digests, reloaded without a restart.

A keys file is JSON: {"keys": [{"name": "ed-triage", "sha256": "<hex digest of the key>",
"requests_per_minute": 60, "tokens_per_minute": 100000, "max_concurrent": 4, "priority": -10}]}; the
limits and the priority are optional. The file never holds a key, only its digest, so reading it (or a
backup of it) does not give access. `medvllm keys new --name NAME` prints a fresh key and its entry.
The file is re-read on SIGHUP and when it changes on disk (checked at most once a second), so keys
rotate without dropping a request; a file that no longer parses keeps the previous keys and logs why.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
from dataclasses import dataclass

from medvllm.errors import ConfigError
from medvllm.server.auth import normalize_key
from medvllm.server.errors import unauthorized

log = logging.getLogger("medvllm.server")
KEYS_FILE_ENV = "MEDVLLM_API_KEYS_FILE"
LIMITS = ("requests_per_minute", "tokens_per_minute", "max_concurrent")
FIELDS = ("name", "sha256", "priority") + LIMITS
HEX64 = re.compile(r"[0-9a-f]{64}")
RECHECK_S = 1.0  # how often a request may stat the keys file for changes


@dataclass(frozen=True)
class Identity:
    """Who sent a request: a key's name and its limits (None: unlimited)."""

    name: str
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    priority: int | None = None  # the default priority of this key's requests


ANONYMOUS = Identity("anonymous")  # auth is off: one shared identity without limits


def digest(key: str) -> bytes:
    return hashlib.sha256(key.strip().encode()).digest()


def new_entry(name: str) -> tuple[str, dict]:
    """A fresh random key and the keys-file entry that admits it."""
    import secrets

    key = "mvk-" + secrets.token_urlsafe(32)
    return key, {"name": name, "sha256": digest(key).hex()}


def parse_keys(text: str, path: str) -> dict[bytes, Identity]:
    """digest -> Identity; raises ConfigError naming the first problem."""
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"keys file {path} is not valid JSON ({e}); fix it") from None
    entries = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f'keys file {path} must be {{"keys": [{{"name": ..., "sha256": ...}}, ...]}} with a key')
    table: dict[bytes, Identity] = {}
    for i, e in enumerate(entries):
        where = f"keys file {path}, entry {i}"
        if not isinstance(e, dict):
            raise ConfigError(f"{where} is not an object: give name and sha256")
        unknown = sorted(set(e) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where} has unknown field(s) {', '.join(unknown)}: allowed are {', '.join(FIELDS)}")
        name, hexdigest = e.get("name"), e.get("sha256")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"{where} has no name: give each key a name (a ward, an application)")
        if not isinstance(hexdigest, str) or not HEX64.fullmatch(hexdigest.lower()):
            raise ConfigError(
                f"{where} ({name}): sha256 must be the 64-hex-digit SHA-256 of the key, never the key itself; "
                "make one with `medvllm keys new --name NAME`"
            )
        for field in LIMITS:
            value = e.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{where} ({name}): {field}={value!r} must be a positive integer or absent")
        priority = e.get("priority")
        if priority is not None and (not isinstance(priority, int) or isinstance(priority, bool)):
            raise ConfigError(f"{where} ({name}): priority={priority!r} must be an integer or absent")
        d = bytes.fromhex(hexdigest.lower())
        if d in table:
            raise ConfigError(f"{where} ({name}) repeats the key of {table[d].name!r}: give each key one entry")
        table[d] = Identity(name.strip(), *(e.get(f) for f in LIMITS), priority)
    return table


class KeyTable:
    """Who a request's Bearer key belongs to. Built from one key (named "default"), a keys file, or
    nothing (auth off)."""

    def __init__(self, api_key: str | None = None, keys_file: str | None = None):
        self._lock = threading.RLock()  # SIGHUP's handler may run on the thread already holding it
        self._file, self._stamp, self._checked = keys_file, None, 0.0
        self._table: dict[bytes, Identity] = {}
        api_key = normalize_key(api_key)
        if api_key:
            self._table[digest(api_key)] = Identity("default")
        if keys_file:
            self._table.update(self._read())
        self._single = dict(self._table) if api_key else {}

    @property
    def enabled(self) -> bool:
        return bool(self._table)

    def names(self) -> list[str]:
        return sorted(i.name for i in self._table.values())

    def identify(self, authorization: str | None) -> Identity:
        """The key's Identity; a 401 APIError unless `authorization` is 'Bearer <a known key>'."""
        if not self._table:
            return ANONYMOUS
        self._maybe_reload()
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise unauthorized("no API key given: send it as the header 'Authorization: Bearer KEY'")
        presented = digest(given)
        found = None
        for known, identity in self._table.items():  # every entry compared in constant time
            if hmac.compare_digest(presented, known):
                found = identity
        if found is None:
            raise unauthorized("incorrect API key: check the key you were given")
        return found

    def reload(self) -> bool:
        """Re-reads the keys file (SIGHUP). Keeps the current keys if it does not parse."""
        if not self._file:
            return False
        try:
            table = self._read()
        except ConfigError as e:
            log.error("keys file not reloaded, the previous keys stay in force: %s", e)
            return False
        with self._lock:
            self._table = {**table, **self._single}
        log.info("keys reloaded: %d keys (%s)", len(self._table), ", ".join(self.names()))
        return True

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if not self._file or now - self._checked < RECHECK_S:
            return
        self._checked = now
        if self._stat() != self._stamp:
            self.reload()

    def _stat(self):
        try:
            s = os.stat(self._file)  # follows Kubernetes' symlinked Secret files to the current version
            return (s.st_ino, s.st_mtime_ns, s.st_size)
        except OSError:
            return None

    def _read(self) -> dict[bytes, Identity]:
        self._stamp = self._stat()
        try:
            with open(self._file, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError(f"cannot read keys file {self._file} ({e.strerror}); check the path") from None
        return parse_keys(text, self._file)
