#!/usr/bin/env bash
# Drives a real `kiln serve` with the official openai Python SDK
# (tests/openai_client.py). Installs openai and pytest into .venv-openai
# (git-ignored) unless they are there, builds kiln unless KILN_BIN names a
# binary, fetches the default model.
# Usage: scripts/test-openai-client.sh [pytest args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_OPENAI_VENV:-$root/.venv-openai}"
cd "$root"

if ! "$venv/bin/python" -c "import openai, pytest" 2>/dev/null; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40" "pytest>=8"
fi
bash models/fetch_default.sh >/dev/null
if [ -z "${KILN_BIN:-}" ]; then
  cargo build --quiet --bin kiln
  export KILN_BIN="$root/target/debug/kiln"
fi
exec "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/openai_client.py "$@"
