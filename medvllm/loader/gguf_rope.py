"""Recover Llama 3 rope scaling from the `rope_freqs.weight` tensor llama.cpp stores instead.

llama.cpp's converter turns HF's llama3 rope parameters into one divisor per rotary frequency and
drops the parameters. The divisors depend only on the ratios original_context / low_freq_factor and
original_context / high_freq_factor, so with the context fixed (8192, llama.cpp's own default) the two
factors follow from a line fit through the interpolated frequencies. The result is checked by
recomputing every divisor with transformers' formula; a file it does not reproduce is refused.
"""

import math

import numpy as np

from medvllm.errors import ModelLoadError


def llama3_rope(factors: np.ndarray, theta: float, head_dim: int, original_context: int, path: str) -> dict:
    factors = factors.astype(np.float64).reshape(-1)
    factor = float(factors.max())
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    if len(factors) != len(inv_freq):
        raise _refuse(path, f"it holds {len(factors)} values for {len(inv_freq)} rotary frequencies")
    if factor <= 1.0:
        return {"rope_type": "default", "rope_theta": theta}
    u = original_context * inv_freq / (2 * math.pi)  # = original_context / wavelength
    smooth = (1 / factors - 1 / factor) / (1 - 1 / factor)  # 0 where fully scaled, 1 where unscaled
    middle = (smooth > 1e-6) & (smooth < 1 - 1e-6)
    scaled_top = u[smooth <= 1e-6].max(initial=0.0)  # thresholds must fall between these groups
    unscaled_bottom = u[smooth >= 1 - 1e-6].min(initial=u.max() * 2)
    if middle.sum() >= 2:  # smooth = (u - low) / (high - low): fit the line
        slope, intercept = np.polyfit(u[middle], smooth[middle], 1)
        low, high = -intercept / slope, (1 - intercept) / slope
    elif middle.sum() == 1:  # a line through the one point, narrow enough to miss the others
        (u1,), (s1,) = u[middle], smooth[middle]
        width = 0.5 * min((u1 - scaled_top) / s1, (unscaled_bottom - u1) / (1 - s1))
        low, high = u1 - s1 * width, u1 + (1 - s1) * width
    else:  # no interpolated frequency: any thresholds in the gap reproduce the file
        low = scaled_top + (unscaled_bottom - scaled_top) / 3
        high = scaled_top + 2 * (unscaled_bottom - scaled_top) / 3
    for digits in (3, None):  # prefer round values (Meta's are 1 and 4) when they reproduce the file
        rope = {
            "rope_type": "llama3",
            "rope_theta": theta,
            "factor": factor,
            "low_freq_factor": round(float(low), digits) if digits else float(low),
            "high_freq_factor": round(float(high), digits) if digits else float(high),
            "original_max_position_embeddings": int(original_context),
        }
        if np.allclose(_divisors(rope, inv_freq), factors, rtol=1e-4, atol=1e-6):
            return rope
    raise _refuse(path, "its values do not follow Llama 3 rope scaling")


def _divisors(rope: dict, inv_freq: np.ndarray) -> np.ndarray:
    """inv_freq / inv_freq_llama3, as transformers' _compute_llama3_parameters computes it."""
    context, low, high, factor = (
        rope[k] for k in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor", "factor")
    )
    wavelen = 2 * math.pi / inv_freq
    smooth = (context / wavelen - low) / (high - low)
    scaled = np.where(wavelen > context / low, 1 / factor, (1 - smooth) / factor + smooth)
    scaled = np.where(wavelen < context / high, 1.0, scaled)
    return 1 / scaled


def _refuse(path: str, why: str) -> ModelLoadError:
    return ModelLoadError(
        f"rope_freqs.weight in {path} cannot be read as Llama 3 rope scaling ({why}); this loader only "
        f"supports llama3-style rope factors, use a GGUF converted from a Llama 3 checkpoint or without them"
    )
