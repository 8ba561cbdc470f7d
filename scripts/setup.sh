#!/usr/bin/env bash
# Install everything stateshift needs on a fresh Debian machine with Python >= 3.11:
# a virtualenv in .venv with the package (editable) and its development tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
