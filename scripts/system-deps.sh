#!/usr/bin/env bash
# Install the system packages the tests run against, when missing: redis-server, pgbouncer,
# the PostgreSQL server binaries, chromium (browser tests) and
# promtool (Debian packages). Idempotent; prints what it installs.
set -euo pipefail
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)
[[ -x /usr/bin/chromium ]] || missing+=(chromium)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
if ! command -v initdb >/dev/null 2>&1 && ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null; then
  missing+=(postgresql)
fi
((${#missing[@]})) || exit 0
echo "Installing system packages: ${missing[*]}"
sudo=()
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || { echo "Need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts the packaged servers; the tests start their own on free ports instead.
if command -v systemctl >/dev/null 2>&1; then
  for service in redis-server pgbouncer prometheus; do
    if [[ " ${missing[*]} " == *" $service "* ]]; then
      "${sudo[@]}" systemctl disable --now "$service" >/dev/null 2>&1 || true
    fi
  done
fi
exit 0
