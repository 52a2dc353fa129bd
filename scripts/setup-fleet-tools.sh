#!/usr/bin/env bash
# The Kubernetes manifests' validator, and the Debian packages the fleet tests drive as real processes: nginx (session
# affinity through a proxy, tests/http_affinity.rs) and PostgreSQL (the
# shared store, tests/store_postgres.rs). Installs what is missing with
# apt-get when it can (root, or passwordless sudo); otherwise says so and
# the tests that need them print SKIP. Never fails the suite.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# The Kubernetes manifests' validator (schemas bundled, works offline):
# deploy/check_manifests.py, run by tests/deploy_manifests.rs.
venv="${KILN_K8S_VENV:-$root/.venv-k8s}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "kubernetes-validate>=1.31,<2" \
  || echo "warning: kubernetes-validate could not be installed: tests/deploy_manifests.rs will skip" >&2

want=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || want+=(nginx-light)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || want+=(postgresql)
[ ${#want[@]} -eq 0 ] && { echo "fleet tools: nginx and PostgreSQL present"; exit 0; }

if [ "$(id -u)" -eq 0 ]; then
  sudo=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  sudo=(sudo -n)
else
  echo "warning: cannot install ${want[*]} (not root, no sudo): the fleet tests will skip" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! "${sudo[@]}" apt-get install -y --no-install-recommends "${want[@]}" >/dev/null 2>&1; then
  "${sudo[@]}" apt-get update -qq >/dev/null 2>&1 || true
  "${sudo[@]}" apt-get install -y --no-install-recommends "${want[@]}" >/dev/null 2>&1 \
    || echo "warning: apt-get could not install ${want[*]}: the fleet tests will skip" >&2
fi
# Debian starts the services it installs where it can; the tests run their own.
"${sudo[@]}" service nginx stop >/dev/null 2>&1 || true
"${sudo[@]}" service postgresql stop >/dev/null 2>&1 || true
exit 0
