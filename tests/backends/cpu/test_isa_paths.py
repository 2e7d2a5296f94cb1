"""Every instruction-set path of the native kernels, on whatever x86-64 machine runs the tests.

The kernels compile for the machine they run on: an AVX-512 / AMX machine never builds the AVX2 paths,
an AVX2 one never builds the AVX-512 ones. Here the kernel tests (each against plain PyTorch math or
attention written out in float64) run again in a fresh process whose kernels are built for another
target. A target newer than the machine is skipped: its code would not run here.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[2]
KERNEL_TESTS = [
    "backends/cpu/test_paged_attention.py",
    "quantization/test_int8.py",
    "backends/cpu/test_decode_layer.py",
    "backends/cpu/test_first_max.py",
    "backends/cpu/test_panel_linear.py",
    "backends/cpu/test_gguf_kernels.py",
]
# the kernels' own tests; the default-model ones repeat what the engine tests cover and cost a load each
SELECT = "not default_model and not fbgemm and not stands_aside"


_NEEDS = {
    "icelake-server": ("avx512f", "avx512bw", "avx512_vnni"),
    "skylake-avx512": ("avx512f", "avx512bw"),
    "x86-64-v3": ("avx2", "fma"),
    "x86-64": (),
}


def _runs_here(march: str) -> bool:
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        return march == "x86-64"
    return all(f in flags.split() for f in _NEEDS[march])


@pytest.mark.skipif(
    platform.machine() not in ("x86_64", "AMD64") or shutil.which("gcc") is None,
    reason="x86-64 targets, built with gcc",
)
# AVX-512 with VNNI, no AMX (Ice Lake); AVX-512 without VNNI (Skylake); AVX2 + FMA; portable C
@pytest.mark.parametrize("march", ["icelake-server", "skylake-avx512", "x86-64-v3", "x86-64"])
def test_kernel_tests_pass_on_an_older_instruction_set(tmp_path, march):
    if not _runs_here(march):
        pytest.skip(f"this CPU lacks instructions {march} code uses")
    env = {**os.environ, "MEDVLLM_NATIVE_MARCH": march, "MEDVLLM_CACHE_DIR": str(tmp_path)}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-o",
            "addopts=",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            SELECT,
            *[str(TESTS / name) for name in KERNEL_TESTS],
        ],
        env=env,
        cwd=TESTS.parent,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and list(tmp_path.rglob("kernels-*.so"))  # built there, for that target
