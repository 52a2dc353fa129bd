#!/usr/bin/env bash
# Drives kiln's Files and Batch APIs with the official openai Python SDK
# (tests/batch_openai.py). Uses the venv .venv-openai (git-ignored; shared with
# the HTTP tests), installing `openai` from PyPI; builds kiln (unless KILN_BIN is set), fetches the
# default model. Exits 77 when Python, venv or pip is unavailable (a skip).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_OPENAI_VENV:-$root/.venv-openai}"
cd "$root"

skip() { echo "SKIP: $*" >&2; exit 77; }
command -v python3 >/dev/null || skip "python3 is not installed"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" || skip "python3 -m venv failed (is python3-venv installed?)"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "openai>=1.40" \
  || skip "pip could not install openai (no network or PyPI unreachable)"

bash models/fetch_default.sh >/dev/null || skip "the default model could not be fetched"
if [ -z "${KILN_BIN:-}" ]; then
  cargo build --quiet --bin kiln
  export KILN_BIN="$root/target/debug/kiln"
fi
exec "$venv/bin/python" tests/batch_openai.py
