"""API-key auth: a Bearer key compared in constant time, and the rule for binding without one."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass

from medvllm.errors import ConfigError
from medvllm.server.errors import unauthorized

API_KEY_ENV = "MEDVLLM_API_KEY"


def normalize_key(api_key: str | None) -> str | None:
    """The key as it is compared: without surrounding whitespace (as the presented one is), None if unset.
    A key of only whitespace is refused rather than taken as no key, which would turn auth off."""
    if not api_key:
        return None
    key = api_key.strip()
    if not key:
        raise ConfigError(
            f"the API key {api_key!r} is blank (only whitespace): give a real key with --api-key or "
            f"{API_KEY_ENV}, or unset it"
        )
    return key


@dataclass(frozen=True)
class Caller:
    """Who a request came in as, and the defaults that go with that key. The server has one unnamed key
    today (or none); a table of named keys would give each its own Caller, e.g. an emergency-department
    key with default_priority -10 and a batch-summaries key with 10 (scheduling_policy='priority')."""

    key_name: str | None = None
    default_priority: int = 0  # for requests that give no `priority` of their own


class KeyCheck:
    def __init__(self, api_key: str | None, default_priority: int = 0):
        self.caller = Caller(default_priority=default_priority)
        key = normalize_key(api_key)
        # compare digests, not the keys: equal lengths, so the time taken says nothing about the key
        self._digest = None if key is None else hashlib.sha256(key.encode()).digest()

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None) -> Caller:
        """The caller, or raises a 401 APIError unless `authorization` is 'Bearer <the key>' (or no key is
        set)."""
        if self._digest is None:
            return self.caller
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise unauthorized("no API key given: send it as the header 'Authorization: Bearer KEY'")
        digest = hashlib.sha256(given.strip().encode()).digest()
        if not hmac.compare_digest(digest, self._digest):
            raise unauthorized("incorrect API key: check the key the server was started with")
        return self.caller


def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def check_bind(host: str, api_key: str | None, allow_unauthenticated: bool) -> None:
    """Refuses to serve beyond this machine without a key, unless the operator says so explicitly."""
    if api_key or allow_unauthenticated or is_loopback(host):
        return
    raise ConfigError(
        f"--host {host} is reachable from other machines and no API key is set, so anyone who can reach it "
        f"could use the model: pass --api-key KEY (or set {API_KEY_ENV}), bind to 127.0.0.1, or pass "
        "--allow-unauthenticated if a proxy in front authenticates"
    )
