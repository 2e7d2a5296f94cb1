"""A built wheel carries the clinical text set: it loads from the installed package, without the source tree."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECK = """
import sys
import medvllm
from medvllm.quality.texts import load_texts, shipped_path
assert medvllm.__file__.startswith(sys.argv[1]), medvllm.__file__
assert str(shipped_path()).startswith(sys.argv[1]), shipped_path()
items = load_texts()
assert len(items) >= 60, len(items)
print("ok", len(items))
"""


@pytest.mark.slow
def test_wheel_install_finds_the_clinical_text_set(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
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
    assert "medvllm/quality/data/clinical_texts.jsonl" in zipfile.ZipFile(wheel).namelist()
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
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr
