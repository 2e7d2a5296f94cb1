"""Deployment profiles: find one by name or path, read it, check it against the schema.

Names are looked up in user folders first (MEDVLLM_PROFILES_DIR, several joined with os.pathsep), then in
the profiles shipped with the package. A value that looks like a path must exist: it never falls back to
a shipped profile with the same stem.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from medvllm.deployment import schema
from medvllm.errors import ProfileError

PROFILES_DIR_ENV = "MEDVLLM_PROFILES_DIR"
PROFILE_ENV = "MEDVLLM_DEPLOYMENT_PROFILE"


@dataclass
class Profile:
    name: str
    path: str
    origin: str  # shipped | user | path
    engine: dict  # the settings it sets (every key known to the schema)
    category: str | None = None
    description: str | None = None
    ignored: list[str] = field(default_factory=list)  # unknown top-level keys, kept for forward compatibility
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "path": self.path,
            "origin": self.origin,
            "category": self.category,
            "description": self.description,
            "engine": self.engine,
            "ignored": self.ignored,
            "warnings": self.warnings,
        }


def shipped_dir() -> Path:
    return Path(str(resources.files("medvllm.deployment").joinpath("profiles")))


def user_dirs(env: Mapping[str, str]) -> list[Path]:
    return [Path(p).expanduser() for p in env.get(PROFILES_DIR_ENV, "").split(os.pathsep) if p.strip()]


def is_path_like(value: str) -> bool:
    return value.endswith(".json") or "/" in value or os.sep in value or (os.altsep or "/") in value


def find(value: str, env: Mapping[str, str]) -> tuple[Path, str]:
    """The file a profile name or path refers to, and its origin."""
    if is_path_like(value):
        path = Path(value).expanduser()
        if not path.is_file():
            raise ProfileError(
                f"deployment profile file {value!r} does not exist: check the path "
                "(a path is never replaced by a shipped profile of the same name)"
            )
        return path, "path"
    for origin, folder in [("user", d) for d in user_dirs(env)] + [("shipped", shipped_dir())]:
        candidate = folder / f"{value}.json"
        if candidate.is_file():
            return candidate, origin
    known = ", ".join(sorted(names(env))) or "none"
    raise ProfileError(f"unknown deployment profile {value!r}: use one of {known}, a path to a .json file, or 'none'")


def names(env: Mapping[str, str]) -> list[str]:
    """Every profile name available, user folders first; a user profile hides a shipped one of that name."""
    seen: dict[str, None] = {}
    for folder in user_dirs(env) + [shipped_dir()]:
        if folder.is_dir():
            for p in sorted(folder.glob("*.json")):
                seen.setdefault(p.stem, None)
    return list(seen)


def load(value: str, env: Mapping[str, str]) -> Profile:
    """Load and check a profile by name or path. Raises ProfileError naming the file and the problem."""
    path, origin = find(value, env)
    return parse(path.read_text(encoding="utf-8"), str(path), origin, default_name=path.stem)


def parse(text: str, path: str, origin: str = "path", default_name: str | None = None) -> Profile:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProfileError(
            f"deployment profile {path} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ProfileError(
            f"deployment profile {path} must be a JSON object with an 'engine' object, not a {type(data).__name__}"
        )
    problems = schema.check(data)
    if problems:
        raise ProfileError(f"deployment profile {path} is invalid: " + "; ".join(problems))
    ignored = sorted(set(data) - schema.known_keys())
    # a profile found by name is called by that name; one given as a path by its own "profile" key
    name = default_name if origin != "path" and default_name else data.get("profile") or Path(path).stem
    warnings = (
        [f"profile {name!r}: ignoring unknown key(s) {', '.join(ignored)} (kept for forward compatibility)"]
        if ignored
        else []
    )
    engine = dict(data["engine"])
    return Profile(
        name=name,
        path=path,
        origin=origin,
        engine=engine,
        category=data.get("category"),
        description=data.get("description"),
        ignored=ignored,
        warnings=warnings,
    )


def load_all(env: Mapping[str, str]) -> list[Profile | ProfileError]:
    """Every available profile, loaded; a broken one is returned as its ProfileError."""
    out: list[Profile | ProfileError] = []
    for name in names(env):
        try:
            out.append(load(name, env))
        except ProfileError as e:
            e.profile_name = name
            out.append(e)
    return out
