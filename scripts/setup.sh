#!/usr/bin/env bash
# Install everything stateshift needs on a fresh Debian machine with Python >= 3.11:
# a virtualenv in .venv with the package (editable) and its development tools, then the hot
# modules compiled with mypyc (stateshift/native.py; STATESHIFT_MYPYC=0 skips that step).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip 'setuptools>=70.1'
.venv/bin/python -m pip install --quiet -e '.[dev]'
# mypyc compiles in place, with this venv's mypy and dependencies (so it sees the types that
# `mypy` checks); skipped while every extension was compiled from the source that is there.
if [ "${STATESHIFT_MYPYC:-1}" = "1" ] && ! NO_COLOR=1 .venv/bin/stateshift native --fresh; then
    echo "== compiling the hot modules with mypyc (about 90 s)"
    STATESHIFT_MYPYC=1 .venv/bin/python -m pip install --quiet --no-build-isolation --no-deps -e .
    NO_COLOR=1 .venv/bin/stateshift native --fresh
fi
