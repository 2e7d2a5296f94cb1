"""Build the two engines a comparison runs: settings resolved like any run, plus what scoring needs.

What the comparison itself sets on both sides (source "quality" in the report):
- prefix caching off: `ModelRunner.score` writes its KV at the top of the pool, which could overwrite a
  cached prefix block; it changes no numerics.
- an explicit, small KV pool of KV_TOKENS tokens (unless given): two engines share the device, and on
  CUDA each would otherwise claim `gpu_memory_utilization` of the whole GPU. Counted in tokens, not
  blocks: the flash profile's blocks are 16 times the default's.
"""

from __future__ import annotations

from collections.abc import Mapping

from medvllm.deployment import Resolution, resolve
from medvllm.hardware import HardwareInfo

SOURCE = "quality"
FORCED = {"enable_prefix_caching": False}
DEFAULTS = {"max_model_len": 1024}
KV_TOKENS = 8192


def resolve_side(
    overrides: dict, profile: str | None, env: Mapping[str, str], hardware: HardwareInfo, model_info=None
) -> Resolution:
    """resolve() with the comparison's own settings added; raises ProfileError for a profile that
    cannot run on `hardware`."""
    wanted = dict(overrides)
    added = dict(FORCED, **{k: v for k, v in DEFAULTS.items() if k not in wanted})
    wanted.update(added)
    resolution = resolve(wanted, profile, env, hardware, model_info)
    if "num_kvcache_blocks" not in wanted:  # the block size is known once the profile is applied
        added["num_kvcache_blocks"] = -(-KV_TOKENS // resolution.config.kvcache_block_size)
        wanted["num_kvcache_blocks"] = added["num_kvcache_blocks"]
        resolution = resolve(wanted, profile, env, hardware, model_info)
    for key in added:
        resolution.sources[key] = SOURCE
        resolution.given.pop(key, None)  # the comparison's, not the user's
    return resolution


def reference_overrides(model: str | None) -> dict:
    """The default reference: the same model in float32, no quantization, no profile (Config defaults)."""
    return {"model": model} if model is not None else {}


def load(resolution: Resolution):
    from medvllm.llm import LLM

    return LLM(config=resolution.config)
