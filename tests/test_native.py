"""The compiled hot modules (`stateshift.native`): what is run is what was compiled from the
sources that are there, or the sources themselves."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import sys
from pathlib import Path

import pytest

from stateshift import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def package(root: Path, ext: bool, record: str | None) -> Path:
    """`pkg.mod` (source) and, when `ext`, a file where Python looks for its extension
    (garbage, so that importing it fails); `record`: what the build record says it was
    compiled from (`"source"`: the digest of the source as written, None: no record)."""
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    mod = root / "pkg" / "mod.py"
    mod.write_text("WHERE = 'source'\n")
    if ext:
        (root / "pkg" / f"mod{SUFFIX}").write_bytes(b"not a shared object")
    if record is not None:
        sha = native.digest(mod) if record == "source" else record
        (root / "stateshift").mkdir()
        native.record_path(root / "stateshift").write_text(
            json.dumps({"modules": {"pkg.mod": sha}})
        )
    return mod


@pytest.mark.parametrize(
    ("ext", "record", "missing", "stale"),
    [
        (False, None, ["pkg.mod"], []),
        (True, "0" * 64, [], ["pkg.mod"]),
        (True, None, [], ["pkg.mod"]),
        (True, "source", [], []),
    ],
    ids=["not compiled", "source changed since", "no build record", "fresh"],
)
def test_inspect_sorts_modules_by_what_their_build_record_says(
    tmp_path: Path, ext: bool, record: str | None, missing: list[str], stale: list[str]
) -> None:
    package(tmp_path, ext, record)
    assert native.inspect(["pkg.mod"], tmp_path) == (missing, stale)


def test_times_do_not_matter_contents_do(tmp_path: Path) -> None:
    """A wheel installed by pip writes `mod.py` after `mod.<abi>.so`; a copy sets new times."""
    mod = package(tmp_path, True, "source")
    ext = tmp_path / "pkg" / f"mod{SUFFIX}"
    os.utime(ext, (1_000.0, 1_000.0))
    os.utime(mod, (2_000.0, 2_000.0))
    assert native.inspect(["pkg.mod"], tmp_path) == ([], [])
    mod.write_text("WHERE = 'edited'\n")
    os.utime(mod, (500.0, 500.0))  # older than the extension, but not what was compiled
    assert native.inspect(["pkg.mod"], tmp_path) == ([], ["pkg.mod"])


def test_an_unreadable_build_record_counts_as_none(tmp_path: Path) -> None:
    package(tmp_path, True, "source")
    native.record_path(tmp_path / "stateshift").write_text("{not json")
    assert native.inspect(["pkg.mod"], tmp_path) == ([], ["pkg.mod"])


def test_source_first_imports_the_py_file_where_an_extension_is_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package(tmp_path, True, None)
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


def test_no_compiled_coroutine_suspends_with_an_exception_in_flight() -> None:
    """mypyc 2.4.1 loses or corrupts such an exception (`stateshift.native`'s docstring)."""
    found = [
        place
        for name in native.MODULES
        for place in native.unsafe_awaits(native.source(name).read_text(), name)
    ]
    assert found == []


def test_the_check_finds_each_unsafe_form() -> None:
    text = """
import asyncio
async def f(x):
    try:
        await x()
    finally:
        await x()
    try:
        await x()
    except OSError:
        await x()
        raise
    async with x() as y:
        await y()
    async with asyncio.timeout(1):
        await x()
def g():
    try:
        pass
    finally:
        pass
"""
    assert native.unsafe_awaits(text, "m") == [
        "m:4: await in finally (f)",
        "m:10: await in except (f)",
        "m:13: async with (f)",
    ]


def test_an_extension_of_a_module_no_longer_compiled_is_stale(tmp_path: Path) -> None:
    """It would be imported (and through it the others' compiled code) though the build no
    longer makes it: `compare.live` left the list this way."""
    package(tmp_path, True, "source")
    (tmp_path / "pkg" / "old.py").write_text("")
    (tmp_path / "pkg" / f"old{SUFFIX}").write_bytes(b"from an earlier build")
    assert native.inspect(["pkg.mod"], tmp_path) == ([], ["pkg.old"])
