"""Every manifest validates offline: Kubernetes kinds against the API schemas kubernetes-validate ships
(strict: an unknown or misspelt field fails), the InferencePool against its v1 CRD's fields."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.manifests import KUSTOMIZATIONS, all_files, load_yaml, one, rendered

# the oldest Kubernetes the manifests promise (the preStop sleep action is 1.30) and the newest known
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
POOL_SCHEMA = json.loads((Path(__file__).parent / "inferencepool_v1.schema.json").read_text(encoding="utf-8"))


def objects():
    """(label, object) for every object a kustomization renders, and every example file's objects."""
    for name in KUSTOMIZATIONS:
        for obj in rendered(name):
            yield f"{name}:{obj['kind']}/{obj['metadata']['name']}", obj
    for path in all_files():
        for obj in load_yaml(path):
            yield f"{path.name}:{obj['kind']}", obj


def validate(obj: dict, version: str) -> None:
    if obj["kind"] == "InferencePool":
        jsonschema.validate(obj, POOL_SCHEMA, cls=jsonschema.Draft202012Validator)
    else:
        kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("label,obj", list(objects()), ids=lambda v: v if isinstance(v, str) else "")
def test_manifest_is_valid(label, obj, version):
    validate(obj, version)


def test_strict_validation_catches_a_misspelt_field():
    deployment = copy.deepcopy(one(rendered("overlays/cpu"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/health"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


@pytest.mark.parametrize(
    "change",
    [
        lambda s: s.update(targetPortNumber=8000),  # the pre-v1 (v1alpha2) field
        lambda s: s["endpointPickerRef"].pop("port"),  # a Service reference needs its port
        lambda s: s["targetPorts"].append({"number": 8001}),  # one port in v1.0
        lambda s: s.pop("endpointPickerRef"),
        lambda s: s["selector"].update(matchLabels={"app": "bad value"}),
    ],
)
def test_pool_schema_refuses_what_the_crd_refuses(change):
    pool = copy.deepcopy(one(rendered("inference-pool"), "InferencePool"))
    change(pool["spec"])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(pool, POOL_SCHEMA, cls=jsonschema.Draft202012Validator)
