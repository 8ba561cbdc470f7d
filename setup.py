"""Build hook: with `STATESHIFT_MYPYC=1`, compile the hot modules (`stateshift.native.MODULES`)
with mypyc. Without it the package is pure Python. `scripts/setup.sh` sets it and builds in
place with the project's own mypy and dependencies (`--no-build-isolation`), so mypyc sees the
same types as `mypy` does.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list[str]:
    """`stateshift.native.MODULES`, read from that file alone (the package itself is not
    importable before it is built)."""
    spec = importlib.util.spec_from_file_location(
        "_stateshift_native", Path(__file__).parent / "stateshift" / "native.py"
    )
    assert spec is not None
    assert spec.loader is not None
    native = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(native)
    return list(native.MODULES)


def ext_modules() -> list[object]:
    if os.environ.get("STATESHIFT_MYPYC") != "1":
        return []
    from mypyc.build import mypycify

    paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
    return list(mypycify(paths, opt_level="3", debug_level="1"))


setup(ext_modules=ext_modules())
