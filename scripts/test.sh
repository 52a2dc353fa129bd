#!/usr/bin/env bash
# kiln's whole test suite, as CI runs it (.ci/run calls this) on a clean clone
# with no GPU: fetches the default model and the embedding test model (pip, PyPI), installs the NVRTC
# library for the kernel compile gate and the Python clients the HTTP tests
# drive (each in its own git-ignored venv), then runs every Rust test with
# the emulated device built in (`--features emu`), so the CUDA runner, its
# kernels and the GPU test suite run too, on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."

# A test run builds once: cargo's incremental caches would double target/
# (~2.6 GB more) for nothing, and CI's disk is not large. Developers who
# iterate with plain `cargo test` keep them.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

echo "== default model"
models/fetch_default.sh

echo "== embedding test model (all-MiniLM-L6-v2)"
models/fetch_minilm.sh

echo "== NVRTC (kernel compile gate)"
if lib="$(scripts/install-nvrtc.sh)"; then
  export KILN_NVRTC_LIB="$lib"
  # the library is there: a kernel that fails to compile fails the suite
  export KILN_REQUIRE_NVRTC=1
else
  echo "warning: NVRTC could not be installed; the kernel compile test will say it skipped" >&2
fi

echo "== gguf package (tests/quant_memory.rs writes a random-weight GGUF with it)"
python3 scripts/gen_quant_fixtures.py setup

if [ -x scripts/setup-python-clients.sh ]; then
  echo "== Python clients (openai SDK, schemathesis)"
  scripts/setup-python-clients.sh
fi

echo "== fleet tools: nginx (session affinity test), PostgreSQL (shared store test), kubernetes-validate (deploy/k8s check)"
scripts/setup-fleet-tools.sh

echo "== the CUDA backend type-checks (no GPU or toolkit needed)"
cargo check --features cuda --all-targets --quiet

echo "== cargo test (CUDA runner and GPU suite on the emulated device)"
cargo test --features emu --no-fail-fast "$@"
