"""API-key auth: a Bearer key compared in constant time, and the rule for binding without one."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

from medvllm.errors import ConfigError
from medvllm.server.errors import unauthorized

API_KEY_ENV = "MEDVLLM_API_KEY"


class KeyCheck:
    def __init__(self, api_key: str | None):
        # compare digests, not the keys: equal lengths, so the time taken says nothing about the key
        self._digest = None if not api_key else hashlib.sha256(api_key.encode()).digest()

    @property
    def enabled(self) -> bool:
        return self._digest is not None

    def check(self, authorization: str | None) -> None:
        """Raises a 401 APIError unless `authorization` is 'Bearer <the key>' (or no key is set)."""
        if self._digest is None:
            return
        scheme, _, given = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            raise unauthorized("no API key given: send it as the header 'Authorization: Bearer KEY'")
        digest = hashlib.sha256(given.strip().encode()).digest()
        if not hmac.compare_digest(digest, self._digest):
            raise unauthorized("incorrect API key: check the key the server was started with")


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
