"""The hot modules compiled with mypyc, and the guard that keeps them honest.

`scripts/setup.sh` compiles `MODULES` (the per-message paths of the new server, the proxy and
the comparator) into C extensions next to their sources (`setup.py`, `STATESHIFT_MYPYC=1`).
Python imports an extension in preference to its `.py`, so an extension compiled from an
earlier source would run code that is no longer there. `install()` (called by each package's
`__init__`, before any of these modules is imported) checks that once per process: when
every module is compiled from the source that is there now, the extensions run;
otherwise **all** of them are imported from source (compiled modules call each other
directly, so a mix is not safe), and a warning says which sources changed.
`STATESHIFT_NATIVE=0` runs the source even where fresh extensions exist (to compare, or to
debug with pdb).

Modules that subclass websockets' connection classes (`proxy.frames`,
`server.connection`) stay interpreted: compiled, `proxy.frames` (a compiled mixin combined
with websockets' classes by multiple inheritance) crashed the interpreter's garbage collector
(mypyc 2.4.1, `docs/native.md`); `server.connection` is left out for the same kind of base.
Their per-frame loop is `stateshift.wsframes.take_simple_frames`, which is compiled.

What mypyc 2.4.1 compiles wrongly in a coroutine (`unsafe_awaits`, checked by the tests on
every module of `MODULES`): an exception raised after a suspension and still in flight while
the coroutine suspends again (an await in a `finally` block, in an `except` block, or in the
`__aexit__` of an `async with`) is lost or corrupted: `TypeError: invalid exception object`,
or a segmentation fault when it is formatted (a proxy's snapshot sweep with the shadow down
crashed the process this way). Compiled modules therefore await neither in `finally` nor in
`except` blocks, and use `async with` only for `asyncio.timeout(...)`, whose exit never
suspends.

The check compares contents, not times: a successful build writes `native-build.json` next
to the extensions (`setup.py`), the SHA-256 of every source as mypyc compiled it, and an
extension counts only while its source still has that digest. So an edit, a checkout or a
pull that changes a source sends everything back to source, and one that only touches files
(a `cp -r`, a wheel installed with pip, which writes the `.py` after the `.so`) does not.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.util
import json
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
#: what a successful build compiled (`setup.py` writes it; see `built_from`)
BUILD_RECORD: Final = "native-build.json"

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


def unsafe_awaits(text: str, filename: str = "<source>") -> list[str]:
    """Where a coroutine in `text` suspends while an exception may be in flight (see the
    module's docstring): awaits in `finally` and `except` blocks, `async with` other than
    `asyncio.timeout(...)`. One line per place, `file:line: what`."""
    found: list[str] = []

    def awaits(body: list[ast.stmt]) -> bool:
        return any(isinstance(node, ast.Await) for stmt in body for node in ast.walk(stmt))

    for func in ast.walk(ast.parse(text, filename)):
        if not isinstance(func, ast.AsyncFunctionDef):
            continue
        for node in ast.walk(func):
            if isinstance(node, ast.Try | ast.TryStar):
                if awaits(node.finalbody):
                    found.append(f"{filename}:{node.lineno}: await in finally ({func.name})")
                for handler in node.handlers:
                    if awaits(handler.body):
                        found.append(f"{filename}:{handler.lineno}: await in except ({func.name})")
            elif isinstance(node, ast.AsyncWith):
                for item in node.items:
                    call = item.context_expr
                    if not (
                        isinstance(call, ast.Call)
                        and ast.unparse(call.func) in ("asyncio.timeout", "timeout")
                    ):
                        found.append(f"{filename}:{node.lineno}: async with ({func.name})")
    return found


def digest(path: Path) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(extensions_dir: Path) -> Path:
    """Where a build's record goes: beside the extensions of the `stateshift` package."""
    return extensions_dir / BUILD_RECORD


def built_from(root: Path = ROOT) -> dict[str, str]:
    """Module name -> digest of the source its extension was compiled from, as the last
    successful build recorded it ({} when there is no readable record)."""
    try:
        record = json.loads(record_path(root / "stateshift").read_text(encoding="utf-8"))
        return {str(name): str(sha) for name, sha in record["modules"].items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def orphans(modules: Sequence[str] = MODULES, root: Path = ROOT) -> list[str]:
    """Modules of the compiled packages that have an extension but are not in `modules`
    (compiled by an earlier build): Python would import them, and through them the others'
    compiled code."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    found = []
    for package in sorted({name.split(".")[0] for name in modules}):
        for path in sorted((root / package).glob(f"*{suffix}")):
            name = f"{package}.{path.name[: -len(suffix)]}"
            if name not in modules:
                found.append(name)
    return found


def inspect(modules: Sequence[str] = MODULES, root: Path = ROOT) -> tuple[list[str], list[str]]:
    """(modules without an extension, modules whose extension is not to be run: compiled
    from a source that changed since, or that no build record names, or no longer meant to
    be compiled at all)."""
    built = built_from(root)
    missing: list[str] = []
    stale: list[str] = []
    for name in modules:
        if extension(name, root) is None:
            missing.append(name)
        elif built.get(name) != digest(source(name, root)):
            stale.append(name)
    return missing, stale + orphans(modules, root)


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
    if missing != list(MODULES) or stale:
        # `stale` names the leftover extensions of modules no longer compiled too
        sys.meta_path.insert(0, SourceFirst([*MODULES, *stale]))
    return _status


def status() -> str:
    """`compiled (mypyc)`, or `source (why)`."""
    return install()
