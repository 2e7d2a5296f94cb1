"""Deployment profiles: load by name or path, check against the schema, auto-select, resolve with provenance."""

from medvllm.deployment.memory import ModelInfo
from medvllm.deployment.profiles import PROFILE_ENV, PROFILES_DIR_ENV, Profile
from medvllm.deployment.resolve import Resolution, resolve
from medvllm.deployment.select import Selection, Verdict, check, select

__all__ = [
    "ModelInfo",
    "PROFILE_ENV",
    "PROFILES_DIR_ENV",
    "Profile",
    "Resolution",
    "resolve",
    "Selection",
    "Verdict",
    "check",
    "select",
]
