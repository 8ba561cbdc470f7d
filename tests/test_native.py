"""The compiled hot modules (`stateshift.native`): what is run is what was compiled from the
sources that are there, or the sources themselves."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import sys
from pathlib import Path

import pytest

from stateshift import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def package(root: Path, source_mtime: float, ext_mtime: float | None) -> None:
    """`pkg.mod` (source) and, unless `ext_mtime` is None, a file where Python looks for its
    extension: garbage, so that importing it fails."""
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    mod = root / "pkg" / "mod.py"
    mod.write_text("WHERE = 'source'\n")
    os.utime(mod, (source_mtime, source_mtime))
    if ext_mtime is not None:
        ext = root / "pkg" / f"mod{SUFFIX}"
        ext.write_bytes(b"not a shared object")
        os.utime(ext, (ext_mtime, ext_mtime))


@pytest.mark.parametrize(
    ("ext_mtime", "missing", "stale"),
    [(None, ["pkg.mod"], []), (1_000.0, [], ["pkg.mod"]), (3_000.0, [], [])],
    ids=["not compiled", "source changed since", "fresh"],
)
def test_inspect_sorts_modules_by_what_their_compiled_file_says(
    tmp_path: Path, ext_mtime: float | None, missing: list[str], stale: list[str]
) -> None:
    package(tmp_path, 2_000.0, ext_mtime)
    assert native.inspect(["pkg.mod"], tmp_path) == (missing, stale)


def test_source_first_imports_the_py_file_where_an_extension_is_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(tmp_path, 2_000.0, 1_000.0)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("pkg", "pkg.mod"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    importlib.invalidate_caches()
    with pytest.raises(ImportError):  # the garbage "extension" is what Python picks
        importlib.import_module("pkg.mod")
    monkeypatch.delitem(sys.modules, "pkg.mod", raising=False)
    monkeypatch.setattr(
        sys, "meta_path", [native.SourceFirst(["pkg.mod"], tmp_path), *sys.meta_path]
    )
    mod = importlib.import_module("pkg.mod")
    assert mod.WHERE == "source"
    assert mod.__file__ == str(tmp_path / "pkg" / "mod.py")


@pytest.mark.skipif(
    os.environ.get("STATESHIFT_EXPECT_NATIVE") != "compiled",
    reason="scripts/test.sh sets STATESHIFT_EXPECT_NATIVE=compiled after compiling",
)
def test_the_suite_runs_the_compiled_modules() -> None:
    """CI tests what `scripts/setup.sh` builds: every hot module from its extension."""
    assert native.status() == "compiled (mypyc)"
    for name in native.MODULES:
        module = importlib.import_module(name)
        assert module.__file__ is not None
        assert module.__file__.endswith(SUFFIX), name
