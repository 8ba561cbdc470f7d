"""The hot modules compiled with mypyc, and the guard that keeps them honest.

`scripts/setup.sh` compiles `MODULES` (the per-message paths of the new server, the proxy and
the comparator) into C extensions next to their sources (`setup.py`, `STATESHIFT_MYPYC=1`).
Python imports an extension in preference to its `.py`, so a compiled file older than its
source would run code that is no longer there. `install()` (called by each package's
`__init__`, before any of these modules is imported) checks that once per process: when
every module is compiled and no source is newer than its extension, the extensions run;
otherwise **all** of them are imported from source (compiled modules call each other
directly, so a mix is not safe), and a warning says which sources changed.
`STATESHIFT_NATIVE=0` runs the source even where fresh extensions exist (to compare, or to
debug with pdb).

Modules that subclass websockets' connection classes (`proxy.frames`,
`server.connection`) stay interpreted: compiled, `proxy.frames` (a compiled mixin combined
with websockets' classes by multiple inheritance) crashed the interpreter's garbage collector
(mypyc 2.4.1, `docs/native.md`); `server.connection` is left out for the same kind of base.
Their per-frame loop is `stateshift.wsframes.take_simple_frames`, which is compiled.

The check compares modification times, which is right for the in-place build `setup.sh`
does (an edit, a checkout or a pull makes a source newer than its extension).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType
from typing import Final

log = logging.getLogger("stateshift.native")

ROOT: Final = Path(__file__).resolve().parent.parent
ENV: Final = "STATESHIFT_NATIVE"

#: compiled by `setup.py` when `STATESHIFT_MYPYC=1` (the order does not matter)
MODULES: Final = (
    "stateshift.hotmetrics",
    "stateshift.wsframes",
    "server.app",
    "server.auth",
    "server.errors",
    "server.fanout",
    "server.games",
    "server.metrics",
    "server.ratelimit",
    "server.rules",
    "server.storage",
    "proxy.metrics",
    "proxy.relay",
    "proxy.sequencer",
    "proxy.tap",
    "compare.comparator",
    "compare.diffing",
    "compare.live",
    "compare.pairing",
    "compare.rules",
)


def source(name: str, root: Path = ROOT) -> Path:
    return root.joinpath(*name.split(".")).with_suffix(".py")


def extension(name: str, root: Path = ROOT) -> Path | None:
    """The compiled file Python would import for `name`, if there is one."""
    base = root.joinpath(*name.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        candidate = base.with_name(base.name + suffix)
        if candidate.exists():
            return candidate
    return None


def inspect(modules: Sequence[str] = MODULES, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(modules without an extension, modules whose source is newer than their extension)."""
    missing: list[str] = []
    stale: list[str] = []
    for name in modules:
        ext = extension(name, root)
        if ext is None:
            missing.append(name)
        elif source(name, root).stat().st_mtime > ext.stat().st_mtime:
            stale.append(name)
    return missing, stale


class SourceFirst:
    """A meta-path finder that imports `modules` from their `.py` files."""

    def __init__(self, modules: Sequence[str], root: Path = ROOT) -> None:
        self.modules = frozenset(modules)
        self.root = root

    def find_spec(
        self, name: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name not in self.modules:
            return None
        return importlib.util.spec_from_file_location(name, source(name, self.root))


_status: str | None = None


def install() -> str:
    """Decide, once per process, whether the compiled modules run; returns `status()`."""
    global _status
    if _status is not None:
        return _status
    missing, stale = inspect()
    if os.environ.get(ENV, "1") == "0":
        _status = f"source ({ENV}=0)"
    elif len(missing) == len(MODULES):
        _status = "source (not compiled: scripts/setup.sh compiles)"
    elif missing or stale:
        changed = ", ".join(stale + missing)
        _status = f"source (compiled files out of date: {changed}; run scripts/setup.sh)"
        log.warning("running every compiled module from source: %s", _status)
    else:
        _status = "compiled (mypyc)"
        return _status
    if missing != list(MODULES):
        sys.meta_path.insert(0, SourceFirst(MODULES))
    return _status


def status() -> str:
    """`compiled (mypyc)`, or `source (why)`."""
    return install()
