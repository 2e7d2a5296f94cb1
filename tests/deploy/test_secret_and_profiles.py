"""The keys Secret template holds digests only, in the keys-file shape; the ConfigMap's profiles load."""

from __future__ import annotations

import json
import re

from medvllm.deployment.profiles import parse
from tests.deploy.manifests import ROOT, load_yaml, one, rendered

KEY_FIELDS = {"name", "sha256", "requests_per_minute", "tokens_per_minute", "max_concurrent", "priority"}
DIGEST = re.compile(r"[0-9a-f]{64}")


def keys_file() -> dict:
    (secret,) = load_yaml(ROOT / "base" / "secret-api-keys.example.yaml")
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == {"keys.json"}
    assert "data" not in secret  # base64 data could hide anything from a reviewer
    return json.loads(secret["stringData"]["keys.json"])


def test_secret_holds_only_digests():
    entries = keys_file()["keys"]
    assert entries
    for entry in entries:
        assert set(entry) <= KEY_FIELDS and {"name", "sha256"} <= set(entry), entry
        assert DIGEST.fullmatch(entry["sha256"]), "sha256 must be a lowercase hex SHA-256 digest"
        assert not DIGEST.search(entry["name"]) and not entry["name"].startswith("sk-")
        limits = [v for k, v in entry.items() if k not in ("name", "sha256")]
        assert all(isinstance(v, int) and v > 0 for v in limits), entry


def test_secret_name_and_key_match_the_deployment_mount():
    (secret,) = load_yaml(ROOT / "base" / "secret-api-keys.example.yaml")
    volumes = one(rendered("overlays/cpu"), "Deployment")["spec"]["template"]["spec"]["volumes"]
    (mounted,) = [v["secret"] for v in volumes if "secret" in v]
    assert mounted["secretName"] == secret["metadata"]["name"]
    assert [i["key"] for i in mounted["items"]] == list(secret["stringData"])


def test_configmap_profiles_load_without_warnings():
    data = one(rendered("overlays/cpu"), "ConfigMap")["data"]
    assert data
    for file, text in data.items():
        assert file.endswith(".json")
        profile = parse(text, file, origin="user", default_name=file.removesuffix(".json"))
        assert not profile.warnings and profile.name == json.loads(text)["profile"]
