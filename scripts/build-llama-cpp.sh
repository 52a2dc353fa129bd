#!/usr/bin/env bash
# Builds llama.cpp's own `llama-bench` and `llama-server` from the source
# vendored in llama-cpp-python's sdist on PyPI (the same llama.cpp that
# `pip install llama-cpp-python` compiles), for scripts/bench-cpu-peer.sh.
#
#   scripts/build-llama-cpp.sh            prints the directory holding the binaries
#
# Environment: LLAMA_CPP_PYTHON_VERSION (0.3.36), PEER_CACHE (~/.cache/kiln-peer).
# cmake and ninja come from PyPI into a venv under the cache; the build is
# `-DGGML_NATIVE=ON` (tuned for this CPU, as llama.cpp's own default), Release,
# CPU only. Idempotent: a finished build is reused. Nothing lands in git.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${PEER_CACHE:-$HOME/.cache/kiln-peer}"
SRC="$CACHE/llama_cpp_python-$VERSION"
BUILD="$SRC/build-native"
BIN="$BUILD/bin"

if [ -x "$BIN/llama-bench" ] && [ -x "$BIN/llama-server" ]; then
  echo "$BIN"
  exit 0
fi
mkdir -p "$CACHE"
VENV="$CACHE/venv-build"
if [ ! -x "$VENV/bin/cmake" ] || [ ! -x "$VENV/bin/ninja" ]; then
  echo "build-llama-cpp: installing cmake and ninja from PyPI into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check cmake ninja
fi
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  echo "build-llama-cpp: downloading llama-cpp-python==$VERSION sdist" >&2
  tmp="$(mktemp -d)"
  # --no-binary for this package only: its build dependencies (needed to read
  # the sdist's metadata) come as wheels, not built from source
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-binary llama-cpp-python --no-deps \
    "llama-cpp-python==$VERSION" -d "$tmp"
  tar -xzf "$tmp"/llama_cpp_python-"$VERSION".tar.gz -C "$CACHE"
  rm -rf "$tmp"
fi
echo "build-llama-cpp: building llama-bench and llama-server in $BUILD (several minutes)" >&2
PATH="$VENV/bin:$PATH" cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -G Ninja \
  -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON -DBUILD_SHARED_LIBS=OFF >&2
PATH="$VENV/bin:$PATH" cmake --build "$BUILD" --target llama-bench llama-server -j "$(nproc)" >&2
echo "$BIN"
