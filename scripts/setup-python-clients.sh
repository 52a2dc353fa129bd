#!/usr/bin/env bash
# Installs the Python clients the HTTP tests drive, each in its own
# git-ignored venv: .venv-openai (openai with pydantic, pytest, jsonschema; anthropic) and .venv-schemathesis
# (schemathesis). tests/http_clients.rs runs them against `kiln serve`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
install() { # venv, packages...
  local venv="$1"; shift
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$@"
}
install "${KILN_OPENAI_VENV:-$root/.venv-openai}" "openai>=1.66" "anthropic>=0.40" "pytest>=8" "jsonschema>=4"
install "${KILN_SCHEMATHESIS_VENV:-$root/.venv-schemathesis}" "schemathesis>=4,<5"
