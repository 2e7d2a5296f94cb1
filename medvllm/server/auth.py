"""The API key given on the command line or in the environment, and the rule for binding without one."""

from __future__ import annotations

import ipaddress

from medvllm.errors import ConfigError

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
