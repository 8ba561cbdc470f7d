"""Build hook: with `STATESHIFT_MYPYC=1`, compile the hot modules (`stateshift.native.MODULES`)
with mypyc. Without it the package is pure Python. `scripts/setup.sh` sets it and builds in
place with the project's own mypy and dependencies (`--no-build-isolation`), so mypyc sees the
same types as `mypy` does.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from types import ModuleType

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).parent
#: module -> digest of the source mypyc compiled (filled by `ext_modules`)
COMPILED: dict[str, str] = {}


def native() -> ModuleType:
    """`stateshift/native.py`, loaded from that file alone (the package itself is not
    importable before it is built)."""
    spec = importlib.util.spec_from_file_location(
        "_stateshift_native", HERE / "stateshift" / "native.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ext_modules() -> list[object]:
    if os.environ.get("STATESHIFT_MYPYC") != "1":
        return []
    from mypyc.build import mypycify

    guard = native()
    sources = {name: guard.source(name, HERE) for name in guard.MODULES}
    before = {name: guard.digest(path) for name, path in sources.items()}
    # mypycify reads, checks and translates the sources now; build_ext compiles the C later
    extensions = list(
        mypycify(
            [str(p.relative_to(HERE)) for p in sources.values()], opt_level="3", debug_level="1"
        )
    )
    after = {name: guard.digest(path) for name, path in sources.items()}
    if before != after:
        changed = ", ".join(sorted(n for n in before if before[n] != after[n]))
        raise SystemExit(f"{changed} changed while mypyc compiled it: build again")
    COMPILED.update(before)
    return extensions


class RecordingBuildExt(build_ext):
    """build_ext that records, once every extension is built, which sources they were
    compiled from (`stateshift.native.built_from` reads it). The previous record goes first,
    so that a build that fails half-way leaves none (everything then runs from source)."""

    def run(self) -> None:
        if not COMPILED:
            super().run()
            return
        guard = native()
        name = next(iter(COMPILED))  # root/a/b.so for a.b: root is its parents[1]
        root = Path(self.get_ext_fullpath(name)).parents[name.count(".")]
        record = guard.record_path(root / "stateshift")
        record.unlink(missing_ok=True)
        if self.inplace:  # extensions of modules no longer compiled go
            for name in guard.orphans(guard.MODULES, root):
                path = guard.extension(name, root)
                print(f"removing {path}: {name} is no longer compiled")
                path.unlink()
        super().run()
        record.write_text(json.dumps({"modules": COMPILED}, indent=1) + "\n", encoding="utf-8")


setup(ext_modules=ext_modules(), cmdclass={"build_ext": RecordingBuildExt})
