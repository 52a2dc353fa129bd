#!/usr/bin/env bash
# Debian packages the fleet tests drive as real processes: nginx (session
# affinity through a proxy, tests/http_affinity.rs) and PostgreSQL (the
# shared store, tests/store_postgres.rs). Installs what is missing with
# apt-get when it can (root, or passwordless sudo); otherwise says so and
# the tests that need them print SKIP. Never fails the suite.
set -uo pipefail

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
