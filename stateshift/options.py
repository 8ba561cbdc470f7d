"""Option checks shared by the operators' commands (typer callbacks)."""

from __future__ import annotations

import math

import typer


def finite(value: float | None) -> float | None:
    """Any float option (`callback=finite`): a finite number. Typer's `min=`/`max=` bounds
    let `nan` through (every comparison with nan is false) and `inf` through a lower bound,
    so `--rate nan` or `--duration inf` reached the code as if valid."""
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"must be a finite number, not {value!r}")
    return value


def positive_seconds(value: float) -> float:
    """A `--timeout`: a positive, finite number of seconds (0 was reported as a proxy that
    did not answer within 0 s: the network blamed for an option)."""
    if not (math.isfinite(value) and value > 0):
        raise typer.BadParameter("must be a positive number of seconds")
    return value
