#!/usr/bin/env bash
# Installs NVIDIA's NVRTC runtime compiler (PyPI wheel nvidia-cuda-nvrtc, CUDA
# 13.0 line) into a private venv, .venv-nvrtc/ at the repository root
# (git-ignored), and prints the directory that holds libnvrtc.so.13 and
# libnvrtc-builtins.so.13.0 on stdout (the last line; progress goes to stderr).
#
# Used by CI for the kernel compile gate (tests/nvrtc_compile.rs):
#   export KILN_NVRTC_LIB="$(scripts/install-nvrtc.sh)"
#   cargo test --test nvrtc_compile
# No GPU, driver or CUDA toolkit is needed: NVRTC only compiles. The wheel
# ships no CUDA headers, which is why kernels/common.cuh includes none.
# Idempotent: a second run only prints the path. ~90 MB download.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_NVRTC_VENV:-$root/.venv-nvrtc}"
version="${KILN_NVRTC_VERSION:-13.0.88}"

find_lib() {
  local f
  for f in "$venv"/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so.13; do
    if [ -f "$f" ]; then dirname "$f"; return 0; fi
  done
  return 1
}

if dir="$(find_lib)"; then
  echo "$dir"
  exit 0
fi
py="$(command -v python3 || true)"
if [ -z "$py" ]; then
  echo "error: python3 is needed to install the NVRTC wheel (nvidia-cuda-nvrtc==$version)" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ]; then
  echo "kiln: creating $venv" >&2
  "$py" -m venv "$venv" >&2
fi
echo "kiln: installing nvidia-cuda-nvrtc==$version from PyPI (~90 MB)" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "nvidia-cuda-nvrtc==$version" >&2
if ! dir="$(find_lib)"; then
  echo "error: nvidia-cuda-nvrtc==$version installed but libnvrtc.so.13 is not under $venv" >&2
  exit 1
fi
echo "$dir"
