"""A wheel carries the profiles and the schema: they load from the installed package, without the source tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import medvllm, os, sys
from medvllm.deployment import profiles, schema
assert medvllm.__file__.startswith(sys.argv[1]), medvllm.__file__
assert sorted(profiles.names({})) == ["cloud_gpu_tp4_fp16", "cpu", "cpu_gguf", "edge_cpu_int8", "gpu_4bit",
                                     "gpu_8bit", "onprem_gpu_bf16_flash"]
assert profiles.load("gpu_4bit", {}).engine["quantization_method"] == "bnb-nf4"
assert schema.load_schema()["required"] == ["engine"]
print("ok")
"""


@pytest.mark.slow
def test_wheel_install_finds_profiles_and_schema(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    for name in ("README.md",):
        if (REPO / name).exists():
            shutil.copy(REPO / name, src)
    shutil.copytree(REPO / "medvllm", src / "medvllm", ignore=shutil.ignore_patterns("__pycache__"))
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr
    wheel = next((tmp_path / "dist").glob("medvllm-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "medvllm/deployment/deployment_profile.schema.json" in names
    assert sum(n.startswith("medvllm/deployment/profiles/") and n.endswith(".json") for n in names) == 7
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    run = subprocess.run(
        [sys.executable, "-c", CHECK, str(site)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr
