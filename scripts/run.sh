#!/usr/bin/env bash
# `make run`: the whole fleet (web, worker, beat) on the embedded default, via honcho.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
export VAR_DIR="${VAR_DIR:-$PWD/var}"
mkdir -p "$VAR_DIR"
# Debug is off by default, so a real secret key is required: keep one per checkout.
if [[ ! -s "$VAR_DIR/secret_key" ]]; then
  python -c 'import secrets; print(secrets.token_urlsafe(64))' > "$VAR_DIR/secret_key"
  chmod 600 "$VAR_DIR/secret_key"
fi
export DJANGO_SECRET_KEY="${DJANGO_SECRET_KEY:-$(cat "$VAR_DIR/secret_key")}"
export PORT="${PORT:-8000}"
export HOST="${HOST:-127.0.0.1}"
python manage.py migrate --noinput -v0
python manage.py seed_demo --url "http://$HOST:$PORT/admin/"
echo "  Starting web, worker and beat (Ctrl-C stops them all)."
# Each Procfile line runs under scripts/keepalive.py, so a process that crashes is started again
# instead of honcho stopping the whole fleet with it.
sed -E 's#^([a-z]+): (.*)$#\1: exec python scripts/keepalive.py \1 -- \2#' Procfile > "$VAR_DIR/Procfile.run"
# honcho gives the first process type (web) $PORT; the others get PORT+100, +200.
exec honcho start --procfile "$VAR_DIR/Procfile.run" --app-root "$PWD" --port "$PORT"
