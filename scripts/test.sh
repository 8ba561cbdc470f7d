#!/usr/bin/env bash
# The whole test suite from a fresh machine: set-up, lint, types, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# promtool (Debian's prometheus package) checks /metrics and the alert rules in the tests.
if ! command -v promtool >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Debian's Chromium and the Node test clients' pinned packages (ws, playwright-core) for
# tests/clients: the browser and Node end-to-end tests through the proxy.
if [ ! -x /usr/bin/chromium ]; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi
if [ ! -d tests/clients/node_modules ] \
    || [ tests/clients/package-lock.json -nt tests/clients/node_modules/.package-lock.json ]; then
    npm ci --prefix tests/clients --no-audit --no-fund --loglevel=error
fi
echo "== ruff"; .venv/bin/ruff check .
echo "== ruff format"; .venv/bin/ruff format --check .
echo "== mypy"; .venv/bin/mypy
# the suite tests what setup.sh built: the hot modules compiled (tests/test_native.py)
if [ "${STATESHIFT_MYPYC:-1}" = "1" ]; then export STATESHIFT_EXPECT_NATIVE=compiled; fi
echo "== pytest"; .venv/bin/pytest "$@"
