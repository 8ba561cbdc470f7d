#!/usr/bin/env bash
# The main job from a fresh machine: install, then run the whole migration on loopback in one
# command (old server, new server, mirroring proxy with its comparator, simulated players; one
# injected divergence found and resynced; check, flip and rollback under load; a summary).
# Arguments go to `stateshift demo` (see `--help`): e.g. `bash scripts/demo.sh --keep-running`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/stateshift demo "$@"
