"""Read deploy/kubernetes: each kustomization rendered to its list of objects, offline.

Renders the subset of kustomize the folders use (resources, JSON 6902 patches with a target, images), so
the tests need no kustomize binary; test_render.py checks the result against `kubectl kustomize` where
kubectl is installed, so this reading cannot drift from what `kubectl apply -k` sends.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import jsonpatch
import yaml

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUSTOMIZATIONS = ("overlays/cpu", "overlays/gpu", "inference-pool")
SUPPORTED = {"apiVersion", "kind", "resources", "patches", "images"}


def load_yaml(path: Path) -> list:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def render(folder: Path) -> list[dict]:
    spec = load_yaml(folder / "kustomization.yaml")[0]
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}: kustomization fields this reader does not render: {sorted(unknown)}")
    objects: list[dict] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        objects += render(path) if path.is_dir() else load_yaml(path)
    objects = [copy.deepcopy(o) for o in objects]
    for patch in spec.get("patches", []):
        ops = load_yaml(folder / patch["path"])[0]
        targets = [o for o in objects if _matches(o, patch["target"])]
        if len(targets) != 1:
            raise ValueError(f"{folder}: patch {patch['path']} matches {len(targets)} objects, not 1")
        i = objects.index(targets[0])
        objects[i] = jsonpatch.apply_patch(objects[i], ops)
    for image in spec.get("images", []):
        for container in containers(objects):
            if re.sub(r":[^/:]+$", "", container["image"]) == image["name"]:  # by name, whatever the tag
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    return objects


def _matches(obj: dict, target: dict) -> bool:
    return all(obj.get("kind") == v if k == "kind" else obj["metadata"].get(k) == v for k, v in target.items())


def containers(objects: list[dict]) -> list[dict]:
    return [c for o in objects if o["kind"] == "Deployment" for c in o["spec"]["template"]["spec"]["containers"]]


def rendered(name: str) -> list[dict]:
    return render(ROOT / name)


def one(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"{len(found)} objects of kind {kind}"
    return found[0]


def all_files() -> list[Path]:
    """Every manifest file, kustomizations and patches aside (those are not Kubernetes objects)."""
    skip = {"kustomization.yaml", "server.yaml"}
    return sorted(p for p in ROOT.rglob("*.yaml") if p.name not in skip)
