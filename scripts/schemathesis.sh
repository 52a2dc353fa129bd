#!/usr/bin/env bash
# Fuzzes a real `kiln serve` from its own /openapi.json with schemathesis
# (PyPI), a bounded number of examples per operation: no 5xx, and every
# response conforms to the schema (status code, content type, body).
# Installs schemathesis into .venv-schemathesis (git-ignored) unless it is
# there; builds kiln unless KILN_BIN names a binary.
# Usage: scripts/schemathesis.sh [MAX_EXAMPLES] [extra schemathesis args...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${KILN_SCHEMATHESIS_VENV:-$root/.venv-schemathesis}"
cd "$root"
examples="${1:-25}"
shift || true

if [ ! -x "$venv/bin/schemathesis" ]; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis>=4,<5"
fi
bash models/fetch_default.sh >/dev/null
if [ -z "${KILN_BIN:-}" ]; then
  cargo build --quiet --bin kiln
  KILN_BIN="$root/target/debug/kiln"
fi
log="$(mktemp)"
# Small context so that any generated request finishes quickly on a CPU.
"$KILN_BIN" serve --host 127.0.0.1 --port 0 --max-model-len 96 --max-num-seqs 16 \
  --served-model-name kiln-fuzz --max-waiting 4096 --data-dir "" 2>"$log" &
pid=$!
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -f "$log"' EXIT
base=""
for _ in $(seq 1 600); do
  base="$(grep -o 'listening on http://[0-9.:]*' "$log" | head -1 | sed 's/listening on //' || true)"
  [ -n "$base" ] && "$venv/bin/python" -c "import urllib.request as u; u.urlopen('$base/health')" 2>/dev/null && break
  sleep 0.2
done
[ -n "$base" ] || { echo "kiln serve did not start:"; cat "$log"; exit 1; }

cd "$(mktemp -d)" # its report folder and database stay out of the tree
"$venv/bin/schemathesis" run "$base/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance \
  --max-examples "$examples" --seed "${KILN_SCHEMATHESIS_SEED:-1}" --request-timeout 120 --workers 2 --no-color \
  --suppress-health-check too_slow,filter_too_much "$@"
