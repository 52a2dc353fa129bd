#!/usr/bin/env bash
# What the fleet tests need beyond Rust: the Kubernetes manifests' validator
# (PyPI's kubernetes-validate, in .venv-k8s), Debian's nginx, driven as a
# real proxy by tests/http_affinity.rs, and Debian's PostgreSQL, which
# tests/store_postgres.rs starts (as the postgres user) for the shared store. Installs what is missing (apt-get as
# root or with passwordless sudo); otherwise says so and the tests that need
# it print SKIP. Never fails the suite.
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
compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null || want+=(postgresql)
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
# Debian starts the services where it can; the tests run their own.
"${sudo[@]}" service nginx stop >/dev/null 2>&1 || true
"${sudo[@]}" service postgresql stop >/dev/null 2>&1 || true
exit 0
