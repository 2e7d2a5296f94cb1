"""resolve(): explicit overrides + profile (flag, env, or auto-selected) + defaults -> a validated Config.

A pure function of its arguments: the environment and the hardware are passed in, never read here.
Precedence, highest first: overrides -> profile named by flag -> profile named by MEDVLLM_DEPLOYMENT_PROFILE
-> auto-selected profile -> Config defaults.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from medvllm.config import Config
from medvllm.deployment import memory, merge, profiles as profiles_mod, select
from medvllm.deployment.profiles import PROFILE_ENV, Profile
from medvllm.errors import ConfigError, ProfileError
from medvllm.hardware import HardwareInfo

NONE = "none"


@dataclass
class Resolution:
    config: Config
    sources: dict[str, str]  # Config field -> cli | profile:NAME | auto:NAME | default
    profile_name: str | None
    how_chosen: str  # flag | env | auto | none
    reasons: list[str] = field(default_factory=list)  # how the profile was chosen (auto-selection's steps)
    warnings: list[str] = field(default_factory=list)
    profile_path: str | None = None
    # the settings given explicitly (or following one that was), in the keys they were given in, which may
    # be profile keys such as enable_mixed_precision: a run's label says what the user asked for
    given: dict = field(default_factory=dict)

    def settings(self) -> dict[str, dict]:
        """Every resolved setting with its source, for --json output and run metadata. An automatic field
        that another setting chose says which: `default (memory_efficient)`."""
        derived = getattr(self.config, "derived", {})
        return {
            name: {"value": value, "source": _source(self.sources[name], derived.get(name))}
            for name, value in self.config.to_dict().items()
        }

    def to_dict(self) -> dict:
        return {
            "profile": self.profile_name,
            "profile_path": self.profile_path,
            "how_chosen": self.how_chosen,
            "reasons": self.reasons,
            "warnings": self.warnings,
            "settings": self.settings(),
        }


def _source(source: str, chosen_by: str | None) -> str:
    return f"{source} ({chosen_by})" if source == merge.DEFAULT and chosen_by else source


def _requested(profile: str | None, env: Mapping[str, str]) -> tuple[str | None, str]:
    if profile is not None and profile.strip():
        return profile.strip(), "flag"
    from_env = env.get(PROFILE_ENV, "").strip()
    if from_env:
        return from_env, "env"
    return None, "auto"


def resolve(
    overrides: dict,
    profile: str | None,
    env: Mapping[str, str],
    hardware: HardwareInfo,
    model_info: memory.ModelInfo | None = None,
) -> Resolution:
    merge.check_keys(overrides)
    requested, how = _requested(profile, env)
    reasons: list[str] = []
    chosen: Profile | None = None
    if requested is not None and requested.lower() == NONE:
        where = "--deployment-profile none" if how == "flag" else f"{PROFILE_ENV}=none"
        how, reasons = NONE, [f"profiles disabled by {where}: using Config defaults and explicit settings"]
    elif requested is not None:
        chosen = profiles_mod.load(requested, env)
        where = "--deployment-profile" if how == "flag" else PROFILE_ENV
        reasons = [f"{chosen.name}: named by {where}={requested}"]
    else:
        selection = select.select(hardware, env, model_info, overrides)
        chosen, reasons = selection.profile, selection.reasons
    label = None if chosen is None else (f"auto:{chosen.name}" if how == "auto" else f"profile:{chosen.name}")
    values, key_sources = merge.merge(chosen.engine if chosen else None, label, overrides, hardware)
    sources = merge.field_sources(values, key_sources)
    try:
        config = merge.build(values, hardware)
    except ConfigError as e:
        raise _blame(e, chosen, how, {**key_sources, **sources}, hardware, env, model_info) from None
    warnings = list(chosen.warnings if chosen else []) + list(config.warnings)
    if chosen is not None and how != "auto" and model_info is not None:
        fit = memory.estimate(config, model_info, hardware)
        if not fit.fits:
            warnings.append(f"profile {chosen.name!r}: {model_info.name} {fit.describe()}; loading may fail")
    return Resolution(
        config=config,
        sources=sources,
        profile_name=chosen.name if chosen else None,
        how_chosen=how,
        reasons=reasons,
        warnings=warnings,
        profile_path=chosen.path if chosen else None,
        given={k: v for k, v in values.items() if key_sources[k] == merge.CLI},
    )


def _blame(
    err: ConfigError,
    chosen: Profile | None,
    how: str,
    sources: dict,
    hw: HardwareInfo,
    env: Mapping[str, str],
    model: memory.ModelInfo | None,
) -> Exception:
    """A ConfigError caused by a profile's own value becomes a ProfileError with a suggestion."""
    if chosen is None or how == "auto":
        return err
    blamed = [sources.get(f, "") for f in getattr(err, "fields", ())]
    if merge.CLI in blamed or not any(s.startswith("profile:") for s in blamed):
        return err  # the user's own setting is (part of) the problem
    pick = select.select(hw, env, model).profile
    hint = f"auto-selection picks {pick.name!r} here" if pick else "no shipped profile runs here"
    where = "" if how == "flag" else f" (from {PROFILE_ENV})"
    return ProfileError(
        f"deployment profile {chosen.name!r}{where} cannot run on this machine: {err}. "
        f"Try --deployment-profile {pick.name if pick else NONE} ({hint}), or "
        "`medvllm profiles select --explain` to see what runs here"
    )
