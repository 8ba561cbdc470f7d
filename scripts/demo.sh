#!/usr/bin/env bash
# The main job from a fresh machine: install, then run the new state server on a temporary
# database with a generated secret, printing a ready-to-use player token. Ctrl-C stops it
# gracefully. (The full parallel-run demo replaces this once the proxy lands.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export STATESHIFT_SECRET=${STATESHIFT_SECRET:-$(.venv/bin/python -c 'import secrets; print(secrets.token_hex(32))')}
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
echo "player token for game g1 (alice):"
.venv/bin/stateshift token --sub alice --role player --game g1
.venv/bin/stateshift serve --host 127.0.0.1 --port "${PORT:-8765}" --db "$workdir/state.db"
