"""What a run measures: the model files (--models) and the Med-vLLM configurations (profile + method).

Model names: `default` (the embedded SmolLM2-135M-Instruct Q4_1), `llama-1b` (a random-weight Llama in
TinyLlama-1.1B's shape, written by benchmarks/llama_1b.py on first use) or a path to a .gguf file.
A Med-vLLM configuration is PROFILE or PROFILE+METHOD: the deployment profile (`auto`: what this
machine auto-selects; `none`: Config defaults) and, on top of it, Config's `quantization_method`
(`none` clears the profile's).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import common  # noqa: F401  (puts benchmarks/ on sys.path, for llama_1b)

OURS = "Med-vLLM"
NAMED_MODELS = ("default", "llama-1b")


@dataclass(frozen=True)
class MedvllmRun:
    profile: str
    method: str | None = None  # Config.quantization_method over the profile's; None: the profile's own

    @property
    def label(self) -> str:
        return self.profile if self.method is None else f"{self.profile}+{self.method}"

    def args(self) -> list[str]:
        """run_system.py / first_token.py arguments."""
        return ["--profile", self.profile] + ([] if self.method is None else ["--method", self.method])


def split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def medvllm_runs(medvllm: str | None, profile: str, method: str | None) -> list[MedvllmRun]:
    """--medvllm's list (PROFILE[+METHOD], comma-separated) or else the one --profile with --method."""
    if not medvllm:
        return [MedvllmRun(profile, method or None)]
    runs = []
    for item in split(medvllm):
        name, _, how = item.partition("+")
        if not name.strip() or (_ and not how.strip()):
            raise SystemExit(f"--medvllm: {item!r} is not PROFILE or PROFILE+METHOD (e.g. auto, none+dynamic)")
        runs.append(MedvllmRun(name.strip(), how.strip() or None))
    return runs


def row_names(runs: list[MedvllmRun]) -> list[str]:
    """One configuration keeps the table's plain "Med-vLLM" row; several are told apart by their label."""
    return [OURS] if len(runs) == 1 else [f"{OURS} {r.label}" for r in runs]


def model_path(name: str) -> str:
    """A --models entry -> the GGUF file every system of the run reads (llama-1b is written on demand)."""
    if name == "default":
        from medvllm.loader import default_model_path

        return default_model_path()
    if name == "llama-1b":
        import llama_1b

        return llama_1b.ensure()
    if name.endswith(".gguf") and os.path.isfile(name):
        return os.path.abspath(name)
    raise SystemExit(f"--models: {name!r} is neither {' nor '.join(NAMED_MODELS)} nor an existing .gguf file")


def describe(path: str) -> dict:
    """File name, size, quantization type (llama.cpp's file type) and parameter count of a GGUF file."""
    import numpy as np
    from gguf import LlamaFileType

    from medvllm.loader.gguf_file import GGUFFile

    f = GGUFFile(path)
    try:
        quant = LlamaFileType(f.metadata["general.file_type"]).name.removeprefix("MOSTLY_").removeprefix("ALL_")
    except (KeyError, ValueError):
        quant = "?"
    params = sum(int(np.prod(t.shape)) for t in f.tensors.values())
    return {
        "path": path,
        "file": os.path.basename(path),
        "bytes": os.path.getsize(path),
        "quant": quant,
        "params": params,
    }


def headline(model: dict) -> str:
    """`FILE (GGUF Q4_1, 0.82 GB, 1.17B parameters)`."""
    p = model["params"]
    count = f"{p / 1e9:.2f}B" if p >= 1e9 else f"{p / 1e6:.0f}M"
    return f"{model['file']} (GGUF {model['quant']}, {model['bytes'] / 1e9:.2f} GB, {count} parameters)"
