"""The offline reading of the kustomizations equals kubectl's, and no manifest file is left unused."""

from __future__ import annotations

import shutil
import subprocess

import pytest
import yaml

from tests.deploy.manifests import KUSTOMIZATIONS, ROOT, all_files, containers, load_yaml, render, rendered


def key(obj: dict) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_offline_render_matches_kubectl_kustomize(name):
    out = subprocess.run(
        ["kubectl", "kustomize", str(ROOT / name)], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    theirs = sorted((d for d in yaml.safe_load_all(out) if d), key=key)
    assert theirs == sorted(rendered(name), key=key)


def test_every_manifest_is_applied_or_an_example():
    used = {key(o) for name in KUSTOMIZATIONS for o in rendered(name)}
    for path in all_files():
        if not path.name.endswith(".example.yaml"):
            for obj in load_yaml(path):
                assert key(obj) in used, f"{path.relative_to(ROOT)} is in no kustomization"


def test_base_alone_renders_without_model_or_profile():
    """The base leaves --model and --deployment-profile to the overlays: applied alone it would serve the
    embedded default model under an auto-selected profile, which is not what a cluster wants."""
    args = containers(render(ROOT / "base"))[0]["args"]
    assert "--model" not in args and "--deployment-profile" not in args
