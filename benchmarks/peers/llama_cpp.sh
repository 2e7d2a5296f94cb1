#!/usr/bin/env bash
# Build llama.cpp's llama-bench and llama-batched-bench (speed), llama-perplexity and llama-quantize
# (benchmarks/llama_cpp_quality.py) and llama-server (benchmarks/serve_load.py --launch llama.cpp) from the llama-cpp-python source distribution on PyPI (it vendors
# llama.cpp), natively for this CPU, into a cache outside the repo.
# Idempotent: does nothing when the binaries are already there.
#
#   bash benchmarks/peers/llama_cpp.sh            # version: LLAMA_CPP_PYTHON_VERSION (default below)
#   JOBS=2 NICE=19 bash benchmarks/peers/llama_cpp.sh
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${MEDVLLM_BENCH_CACHE:-$HOME/.cache/medvllm-bench}"
ROOT="$CACHE/llama-cpp-python-$VERSION"
BIN="$ROOT/build/bin"
JOBS="${JOBS:-2}"
NICE="${NICE:-19}"

TOOLS=(llama-bench llama-batched-bench llama-perplexity llama-quantize llama-server)
if [[ -x "$BIN/llama-bench" && -x "$BIN/llama-batched-bench" && -x "$BIN/llama-perplexity" && -x "$BIN/llama-quantize" && -x "$BIN/llama-server" ]]; then
  echo "llama.cpp already built: $BIN"
  exit 0
fi

mkdir -p "$ROOT"
if [[ ! -d "$ROOT/src" ]]; then
  # The source distribution only (no wheel of it, no dependencies: the bench tools need none); its
  # build requirements come as wheels, only to read its metadata.
  nice -n "$NICE" python -m pip download --no-binary llama-cpp-python --no-deps \
    -d "$ROOT/sdist" "llama-cpp-python==$VERSION"
  tmp="$ROOT/src.partial"
  rm -rf "$tmp" && mkdir -p "$tmp"
  tar -xzf "$ROOT"/sdist/llama_cpp_python-"$VERSION".tar.gz -C "$tmp" --strip-components=1
  mv "$tmp" "$ROOT/src"
fi

# GCC 12's _tile_loadconfig declares an 8-byte operand, so the stores that fill the 64-byte tile config
# are dropped and the AMX path dies with an illegal instruction; a compiler barrier before the load
# keeps them. Applied once, and harmless where the CPU has no AMX (the file is not built there).
MMQ="$ROOT/src/vendor/llama.cpp/ggml/src/ggml-cpu/amx/mmq.cpp"
if [[ -f "$MMQ" ]] && ! grep -q 'medvllm: keep tile config stores' "$MMQ"; then
  sed -i 's|^\( *\)_tile_loadconfig(&tc);|\1asm volatile("" ::: "memory");  // medvllm: keep tile config stores\n\1_tile_loadconfig(\&tc);|' "$MMQ"
  grep -q 'medvllm: keep tile config stores' "$MMQ" || { echo "could not patch $MMQ" >&2; exit 1; }
fi

# Native Release build of these tools only (an earlier build without the server only adds it). No curl (nothing is downloaded at run time), no tests.
nice -n "$NICE" cmake -S "$ROOT/src/vendor/llama.cpp" -B "$ROOT/build" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=ON -DLLAMA_BUILD_SERVER=ON -DBUILD_SHARED_LIBS=OFF
nice -n "$NICE" cmake --build "$ROOT/build" --target "${TOOLS[@]}" -j "$JOBS"
echo "built: ${TOOLS[*]/#/$BIN/}"
