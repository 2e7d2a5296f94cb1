"""Builds the C kernels in this folder with the system C compiler at first use, and loads them.

The library is compiled for this CPU (-march=native, or MEDVLLM_NATIVE_MARCH) into a cache folder
keyed by the sources, the flags and the CPU, so only the first start on a machine pays the build (one
compile of kernels.c, which includes every other file: much quicker than one compile per file).
Without a compiler the loader says why, and the caller keeps PyTorch's path (and records which one
runs). binding.py declares the library's functions and checks its struct layout at load.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
# no -ffast-math: linked into a shared library it sets flush-to-zero for the whole process
BASE_FLAGS = ["-O3", "-fopenmp", "-fPIC", "-shared", "-std=c11", "-fno-math-errno"]


def flags() -> list[str]:
    """Compiler flags: for this CPU, or for the target MEDVLLM_NATIVE_MARCH names (x86-64-v3 builds the
    AVX2 paths on any x86-64 machine: the tests check every path that way; a fleet can share a build)."""
    return [*BASE_FLAGS, f"-march={os.environ.get('MEDVLLM_NATIVE_MARCH') or 'native'}"]


class NativeUnavailable(RuntimeError):
    """The kernels could not be built or loaded here; the message says why."""


def cache_dir() -> Path:
    root = os.environ.get("MEDVLLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "medvllm"
    )
    return Path(root) / "native"


def _cpu_signature() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


LIBRARY = "kernels"  # kernels.c includes every other source of the folder


def load(name: str = LIBRARY) -> ctypes.CDLL:
    """The compiled kernels, built on first use; `name` says which file's functions the caller wants
    (they all live in one library). Raises NativeUnavailable."""
    if not (HERE / f"{name}.c").exists():
        raise NativeUnavailable(f"no native source {name}.c")
    if os.environ.get("MEDVLLM_DISABLE_NATIVE") == "1":
        raise NativeUnavailable("MEDVLLM_DISABLE_NATIVE=1")
    return _library()


@cache
def _library() -> ctypes.CDLL:
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise NativeUnavailable("no C compiler found (install gcc, or set CC)")
    # every source of the folder goes into the key: kernels.c includes them all
    sources = b"\0".join(path.read_bytes() for path in sorted(HERE.glob("*.c")))
    key = hashlib.sha256(
        b"\0".join([sources, " ".join(flags()).encode(), compiler.encode(), _cpu_signature().encode()])
    ).hexdigest()[:16]
    target = cache_dir() / f"{LIBRARY}-{key}.so"
    if not target.exists():
        _compile(compiler, HERE / f"{LIBRARY}.c", target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as e:
        raise NativeUnavailable(f"cannot load {target}: {e}") from None


def _compile(compiler: str, source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    # build beside the target and rename: processes starting together never see half a file
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        done = subprocess.run(
            [compiler, *flags(), str(source), "-o", tmp, "-lm"], capture_output=True, text=True, timeout=120
        )
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["(no message)"])[0]
            raise NativeUnavailable(f"{Path(compiler).name} failed on {source.name}: {first}")
        os.replace(tmp, target)
    except (OSError, subprocess.SubprocessError) as e:
        raise NativeUnavailable(f"cannot run {compiler}: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
