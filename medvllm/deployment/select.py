"""Auto-selection: which shipped profile suits this machine, as a pure function of a HardwareInfo.

The rules follow the product spec's table, in its order; each rule whose condition holds adds its
candidates. Every candidate then goes through `check`, the one "can this run here" test that
`profiles select --explain` shows too: it must build a valid Config on this hardware (with the user's
overrides on top) and, when the model is known, its estimated memory must fit. The first that passes wins.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from medvllm.deployment import memory, merge, profiles as profiles_mod
from medvllm.deployment.profiles import Profile
from medvllm.errors import ConfigError, ProfileError
from medvllm.hardware import HardwareInfo

SMALL_GPU = 10 * 2**30  # below this much memory a GPU gets the 4-bit profile


@dataclass(frozen=True)
class Rule:
    condition: str
    applies: Callable[[HardwareInfo, memory.ModelInfo | None], bool]
    candidates: tuple[str, ...]


def _quantized_gguf(model: memory.ModelInfo | None) -> bool:
    return model is not None and model.quant_type is not None


RULES = (
    # the file's own blocks, at its size in memory, nearer the file in float32 than llama.cpp (docs/QUALITY.md)
    Rule(
        "no CUDA GPU, a quantized GGUF model: it runs on its own blocks, at the file's size, with answers nearer "
        "the file in float32 than llama.cpp's",
        lambda hw, model: not hw.has_cuda and _quantized_gguf(model),
        ("cpu_gguf",),
    ),
    Rule("no CUDA GPU", lambda hw, model: not hw.has_cuda, ("edge_cpu_int8", "cpu")),
    Rule(">= 4 GPUs", lambda hw, model: hw.num_gpus >= 4, ("cloud_gpu_tp4_fp16",)),
    Rule(
        "Ampere or newer GPU (SM >= 8)",
        lambda hw, model: hw.has_cuda and hw.min_gpu_sm >= 8,
        ("onprem_gpu_bf16_flash",),
    ),
    Rule("GPU with < 10 GiB", lambda hw, model: hw.has_cuda and hw.min_gpu_memory < SMALL_GPU, ("gpu_4bit",)),
    Rule("CUDA GPU", lambda hw, model: hw.has_cuda, ("gpu_8bit",)),
    Rule("CUDA GPU, smallest footprint as a last resort", lambda hw, model: hw.has_cuda, ("gpu_4bit",)),
)


@dataclass
class Verdict:
    runnable: bool
    reasons: list[str] = field(default_factory=list)
    fit: memory.Fit | None = None


@dataclass
class Selection:
    profile: Profile | None
    reasons: list[str]  # one line per candidate considered, in order


def check(
    profile: Profile, hw: HardwareInfo, model: memory.ModelInfo | None = None, overrides: dict | None = None
) -> Verdict:
    """Can `profile` (with `overrides` on top) run on `hw`? The one test auto-select and the CLI share."""
    values, _ = merge.merge(profile.engine, f"profile:{profile.name}", overrides or {}, hw)
    try:
        config = merge.build(values, hw)
    except ConfigError as e:
        return Verdict(False, [str(e)])
    if model is None:
        return Verdict(True, ["valid here (model unknown: memory not checked)"])
    fit = memory.estimate(config, model, hw)
    return Verdict(fit.fits, [f"{model.name} {fit.describe()}"], fit)


def candidates(hw: HardwareInfo, model: memory.ModelInfo | None = None) -> list[tuple[str, str]]:
    """(profile name, the rule that proposes it), in rule order, each name once."""
    out: list[tuple[str, str]] = []
    for rule in RULES:
        if rule.applies(hw, model):
            out.extend((name, rule.condition) for name in rule.candidates if name not in {n for n, _ in out})
    return out


def select(
    hw: HardwareInfo, env: Mapping[str, str], model: memory.ModelInfo | None = None, overrides: dict | None = None
) -> Selection:
    overrides = overrides or {}
    if overrides.get("device") == "cpu":
        hw = hw.cpu_only()  # the user pinned the CPU: choose among CPU profiles
    reasons: list[str] = []
    for name, condition in candidates(hw, model):
        try:
            profile = profiles_mod.load(name, env)
        except ProfileError as e:
            reasons.append(f"{name}: skipped, not available ({e})")
            continue
        verdict = check(profile, hw, model, overrides)
        if verdict.runnable:
            reasons.append(f"{name}: chosen ({condition}; {'; '.join(verdict.reasons)})")
            return Selection(profile, reasons)
        reasons.append(f"{name}: skipped ({condition}; {'; '.join(verdict.reasons)})")
    reasons.append("no candidate profile can run here: using Config defaults")
    return Selection(None, reasons)
