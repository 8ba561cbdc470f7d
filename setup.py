"""Build hook: with `STATESHIFT_MYPYC=1`, compile the hot modules (`stateshift.native.MODULES`)
with mypyc. Without it the package is pure Python. `scripts/setup.sh` sets it and builds in
place with the project's own mypy and dependencies (`--no-build-isolation`), so mypyc sees the
same types as `mypy` does.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from setuptools import setup


def compiled_modules() -> list[str]:
    text = (Path(__file__).parent / "stateshift" / "native.py").read_text()
    block = text.split("MODULES: Final = (", 1)[1].split(")", 1)[0]
    return re.findall(r'"([\w.]+)"', block)


def ext_modules() -> list[object]:
    if os.environ.get("STATESHIFT_MYPYC") != "1":
        return []
    from mypyc.build import mypycify

    paths = [name.replace(".", "/") + ".py" for name in compiled_modules()]
    return list(mypycify(paths, opt_level="3", debug_level="1"))


setup(ext_modules=ext_modules())
