#!/usr/bin/env bash
# Drives a real `kiln serve` with the official openai Python SDK
# (tests/openai_client.py). Creates its own venv (.venv-openai, git-ignored)
# with openai and pytest from PyPI, builds kiln, fetches the default model.
# Usage: scripts/test-openai-client.sh [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_OPENAI_VENV:-$root/.venv-openai}"
cd "$root"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40" "pytest>=8"

bash models/fetch_default.sh >/dev/null
cargo build --quiet --bin kiln
export KILN_BIN="$root/target/debug/kiln"
exec "$venv/bin/python" -m pytest -q tests/openai_client.py "$@"
